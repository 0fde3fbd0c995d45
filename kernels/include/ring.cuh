/*
 * ring.cuh: the device side of the gyre ring protocol.
 *
 * Word for word what runtime/docs/ABI.md specifies and runtime/src/ring/mod.rs does on
 * the host; the section numbers below (§) are that document's. Device code is a single
 * consumer of its inbox rings and a single producer of its output rings (only a block's
 * leader thread touches cursors), so no read-modify-write is ever needed on a ring word:
 * every cross-side synchronisation is an acquire load paired with a release store.
 *
 * Two builds of this file exist:
 *  - on a GPU (NVRTC or nvcc), the ordering primitives are inline PTX: `ld.acquire` /
 *    `st.release` at system scope for rings in mapped host memory, at GPU scope for
 *    kernel-to-kernel rings in device memory (ABI.md § 10);
 *  - in the host emulation (g++ with gyre_emu.h, GYRE_EMULATED defined), they are the
 *    GCC __atomic builtins with the same orderings. The emulation runs this protocol
 *    against the Rust host side in the conformance tests; it is an emulation of the
 *    device, not a GPU.
 *
 * Needs no header but gyre_abi.h, so NVRTC compiles it as is.
 */
#ifndef GYRE_RING_CUH
#define GYRE_RING_CUH

#include "gyre_abi.h"

#ifndef GYRE_DEVICE
#define GYRE_DEVICE __device__ __forceinline__
#endif

typedef unsigned long long gyre_u64;

/* Where a ring lives, which decides the scope of its acquire/release pairs. */
#define GYRE_SCOPE_SYSTEM 0u /* mapped host memory: the other side is the host */
#define GYRE_SCOPE_DEVICE 1u /* device memory: the other side is another block */

/* ---- Ordering primitives (ABI.md § 10) ------------------------------------------ */

GYRE_DEVICE gyre_u32 gyre_load_acquire(const gyre_u32 *p, gyre_u32 scope) {
#if defined(GYRE_EMULATED)
    (void)scope;
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
#else
    gyre_u32 v;
    if (scope == GYRE_SCOPE_SYSTEM) {
        asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    } else {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    }
    return v;
#endif
}

GYRE_DEVICE void gyre_store_release(gyre_u32 *p, gyre_u32 v, gyre_u32 scope) {
#if defined(GYRE_EMULATED)
    (void)scope;
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
#else
    if (scope == GYRE_SCOPE_SYSTEM) {
        asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
    } else {
        asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
    }
#endif
}

GYRE_DEVICE gyre_u32 gyre_load_relaxed(const gyre_u32 *p, gyre_u32 scope) {
#if defined(GYRE_EMULATED)
    (void)scope;
    return __atomic_load_n(p, __ATOMIC_RELAXED);
#else
    gyre_u32 v;
    if (scope == GYRE_SCOPE_SYSTEM) {
        asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    } else {
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    }
    return v;
#endif
}

GYRE_DEVICE void gyre_store_relaxed(gyre_u32 *p, gyre_u32 v, gyre_u32 scope) {
#if defined(GYRE_EMULATED)
    (void)scope;
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
#else
    if (scope == GYRE_SCOPE_SYSTEM) {
        asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
    } else {
        asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
    }
#endif
}

/* A full fence at system scope: orders everything the block did before it (through
 * the preceding __syncthreads) before what the leader does after, for every observer. */
GYRE_DEVICE void gyre_fence_system(void) {
#if defined(GYRE_EMULATED)
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#else
    __threadfence_system();
#endif
}

/* Wrapping "a at or after b" (ABI.md § 8). */
GYRE_DEVICE bool gyre_at_or_after(gyre_u32 a, gyre_u32 b) { return (gyre_u32)(a - b) < 0x80000000u; }

/* ---- Layout helpers ---------------------------------------------------------------- */

GYRE_DEVICE GyreRingHeader *gyre_ring(gyre_u64 addr) { return (GyreRingHeader *)addr; }

/* capacity and slot_bytes are written once before the ring is shared: plain loads. */
GYRE_DEVICE gyre_u32 gyre_ring_capacity(const GyreRingHeader *r) { return r->capacity; }
GYRE_DEVICE gyre_u32 gyre_ring_slot_bytes(const GyreRingHeader *r) { return r->slot_bytes; }
GYRE_DEVICE gyre_u32 gyre_ring_payload_bytes(const GyreRingHeader *r) {
    return r->slot_bytes - GYRE_SLOT_HEADER_BYTES;
}

/* The slot of position `pos` (§ 3: index pos & (capacity - 1)). */
GYRE_DEVICE GyreSlotHeader *gyre_slot(GyreRingHeader *r, gyre_u32 pos) {
    gyre_u32 index = pos & (r->capacity - 1u);
    return (GyreSlotHeader *)((unsigned char *)r + GYRE_RING_HEADER_BYTES +
                              (gyre_u64)index * r->slot_bytes);
}

GYRE_DEVICE unsigned char *gyre_slot_payload(GyreSlotHeader *s) {
    return (unsigned char *)s + GYRE_SLOT_HEADER_BYTES;
}

/* ---- Consumer side (§ 5) ------------------------------------------------------------
 * The consumer keeps its own copy of head (`h`, in the caller's block state). It tests a
 * position by its stamp alone, reads the slot with plain loads after that acquire, and
 * publishes the new head once per batch with a release store. It never writes a stamp and
 * never reads tail. */

/* Whether position `pos` holds a message: stamp == pos + 1, loaded with acquire, so the
 * slot body written before the producer's release of the stamp is visible after. */
GYRE_DEVICE bool gyre_consumer_ready(GyreRingHeader *r, gyre_u32 scope, gyre_u32 pos) {
    return gyre_load_acquire(&gyre_slot(r, pos)->seq, scope) == pos + 1u;
}

/* Frees every position before `h` for the producer: one release store per batch, after
 * the last read of those slots. ORDERING: pairs with the producer's acquire load of head
 * (§ 4 step 3); without it a producer could overwrite a slot still being read. */
GYRE_DEVICE void gyre_consumer_release(GyreRingHeader *r, gyre_u32 scope, gyre_u32 h) {
    gyre_store_release(&r->head, h, scope);
}

/* ---- Producer side (§ 4), single producer ------------------------------------------
 * A device kernel is the only producer of each of its output rings (only its leader
 * thread emits), so a claim is the exclusive form of § 4 step 4: no compare-and-swap,
 * tail is a plain store. Device producers never close a ring: a kernel stops producing
 * by stopping, and the host learns it from the control block. */

typedef struct gyre_producer {
    gyre_u32 tail;        /* next position to claim: this side's copy of the tail word */
    gyre_u32 cached_head; /* the last head read from the consumer's line */
} gyre_producer;

GYRE_DEVICE void gyre_producer_init(gyre_producer *p, GyreRingHeader *r, gyre_u32 scope) {
    p->tail = gyre_load_relaxed(&r->tail, scope);
    /* ORDERING: acquire, as Producer::new: a producer that starts after some consumption
     * must not write slots the consumer may still read. */
    p->cached_head = gyre_load_acquire(&r->head, scope);
}

/* Free positions, reading the consumer's head only when the cached copy says the ring
 * is full (§ 4 step 3: a read across PCIe only then). Never computes capacity - used
 * before checking used <= capacity. */
GYRE_DEVICE gyre_u32 gyre_producer_free(gyre_producer *p, GyreRingHeader *r, gyre_u32 scope) {
    gyre_u32 cap = gyre_ring_capacity(r);
    gyre_u32 used = p->tail - p->cached_head;
    if (used <= cap && cap - used > 0u) {
        return cap - used;
    }
    /* ORDERING: acquire pairs with the consumer's release of head: our writes to the
     * freed slots come after its reads of them. */
    gyre_u32 h = gyre_load_acquire(&r->head, scope);
    p->cached_head = h;
    used = p->tail - h;
    if (used > cap) {
        /* Cannot happen with one producer (head never passes our tail); refuse rather
         * than overwrite. */
        return 0u;
    }
    return cap - used;
}

/* Writes one message at position p->tail and publishes it: tag, corr and payload with
 * plain stores, then the stamp last with release (§ 4 steps 7-8), then the tail word
 * (relaxed: only gauges and sweeps read it; consumers go by stamps). The caller checked
 * gyre_producer_free() > 0. `bytes` may be less than the slot's payload; the rest of the
 * payload is zeroed so no stale bytes of an older lap leak. */
GYRE_DEVICE void gyre_producer_push(gyre_producer *p, GyreRingHeader *r, gyre_u32 scope,
                                    gyre_u32 tag, gyre_u32 corr_lo, gyre_u32 corr_hi,
                                    const unsigned char *payload, gyre_u32 bytes) {
    gyre_u32 pos = p->tail;
    GyreSlotHeader *s = gyre_slot(r, pos);
    s->tag = tag;
    s->corr[0] = corr_lo;
    s->corr[1] = corr_hi;
    unsigned char *dst = gyre_slot_payload(s);
    gyre_u32 room = gyre_ring_payload_bytes(r);
    gyre_u32 words = bytes / 4u;
    /* Payloads are 16-aligned in slots and in the staging records: word copies. */
    for (gyre_u32 i = 0; i < words; ++i) {
        ((gyre_u32 *)dst)[i] = ((const gyre_u32 *)payload)[i];
    }
    for (gyre_u32 i = words * 4u; i < bytes; ++i) {
        dst[i] = payload[i];
    }
    gyre_u32 end = (bytes + 3u) & ~3u;
    for (gyre_u32 i = bytes; i < end && i < room; ++i) {
        dst[i] = 0;
    }
    for (gyre_u32 i = end / 4u; i < room / 4u; ++i) {
        ((gyre_u32 *)dst)[i] = 0u;
    }
    /* ORDERING: release, last: the consumer's acquire of the stamp sees the body. */
    gyre_store_release(&s->seq, pos + 1u, scope);
    p->tail = pos + 1u;
    gyre_store_relaxed(&r->tail, p->tail, scope);
}

#endif /* GYRE_RING_CUH */
