/*
 * persistent.cuh: the resident loop of a gyre group, and the handler interface.
 *
 * A group is one cooperative grid; block b runs kernel b of the group's descriptor table
 * (one block per kernel; a kernel's parallelism is its block's threads). The block's
 * leader (thread 0) owns every cursor and the control block; all threads run handlers.
 *
 * One turn of the loop:
 *   1. the leader waits for work (polls its inboxes and its command word, backing off
 *      with __nanosleep and bumping the heartbeat), applying commands as they come;
 *   2. barrier; every thread t < quantum tests the stamp of position start + t of the
 *      chosen inbox (acquire), in parallel, so a batch costs one round trip to host
 *      memory, not one per message;
 *   3. barrier; the leader counts the leading run of full slots: the batch;
 *   4. barrier; handlers run, thread t on message t (or thread 0 on all of them, in order,
 *      for kernels marked sequential); their emits go to per-message staging records in
 *      device memory;
 *   5. barrier; the leader, in message order: copies a failed message to the dead-letter
 *      ring, publishes the message's emits to its ports (waiting, counting a stall, while
 *      a port's ring is full), then frees the batch's inbox positions with one release
 *      store of head, and stores the counters and heartbeat.
 * Exits are uniform: the leader sets `exit` and every thread leaves at the same barrier.
 *
 * Exit rules (runtime/docs/CUDA.md): Terminate stops after the batch in hand; a
 * terminate that arrives while the leader waits for room in an output ring stops at once
 * and leaves the message's unpublished emits in its staging record, which the host reads
 * back; the batch's later messages stay in the inbox. Drain exits when every inbox is
 * empty (the host drains upstream kernels first and closes the host inbox before it
 * issues the drain, so empty means done).
 *
 * The includer defines, before including this file:
 *   __device__ int gyre_dispatch(gyre_u32 handler, gyre_ctx *ctx, const void *msg,
 *                                gyre_u32 bytes);
 * by declaring it; the generated group source defines it after the handlers.
 */
#ifndef GYRE_PERSISTENT_CUH
#define GYRE_PERSISTENT_CUH

#include "gyre_abi.h"
#include "ring.cuh"

#define GYRE_MAX_INBOXES 8u
#define GYRE_MAX_PORTS 8u
#define GYRE_MAX_THREADS 256u
#define GYRE_PARAM_WORDS 16u

/* Port kinds (GYRE_PORT_*), dead-letter reasons (GYRE_DEAD_*), handler results and
 * gyre_emit errors (GYRE_OK, GYRE_ERR_*) come from gyre_abi.h, generated from
 * runtime/src/abi.rs. Handlers return GYRE_OK or any other code of their own: a nonzero
 * return counts an error and sends the message to the dead letters, whose payload starts
 * with a GyreDeadLetterPrefix (reason, code, port, original kind); the original payload
 * follows at byte 16. */

/* Kernel flags. */
#define GYRE_FLAG_SEQUENTIAL 1u /* one thread handles a batch, in order */

/* One ring as a kernel sees it. 32 bytes. */
typedef struct gyre_ring_ref {
    gyre_u64 header;       /* device address of the GyreRingHeader */
    gyre_u32 scope;        /* GYRE_SCOPE_SYSTEM or GYRE_SCOPE_DEVICE */
    gyre_u32 kind;         /* ports: GYRE_PORT_*; inboxes: 0 */
    gyre_u64 peer_control; /* ports to a kernel: its control block; otherwise 0 */
    gyre_u32 payload_bytes; /* ports: the largest message the port takes */
    gyre_u32 reserved;
} gyre_ring_ref;

/* One kernel of a group, written by the host before launch, read-only on the device.
 * 640 bytes; the generated group source static_asserts every offset against the Rust
 * definition (runtime/src/backend/cuda/plan.rs). */
typedef struct gyre_kernel_desc {
    gyre_u64 control;      /* GyreControlBlock, mapped host memory */
    gyre_u64 state;        /* state_bytes of device memory, zeroed at launch; 0 if none */
    gyre_u64 scratch;      /* staging records and the pending record, device memory */
    gyre_u64 dead_letters; /* the dead-letter ring, mapped host memory */
    gyre_u32 handler;      /* case of gyre_dispatch */
    gyre_u32 kernel_id;    /* sender id in tags */
    gyre_u32 n_inboxes;
    gyre_u32 n_ports;
    gyre_u32 quantum;       /* most messages per batch, <= threads per block */
    gyre_u32 max_emits;     /* most emits per message */
    gyre_u32 record_stride; /* bytes per staging record: 32-byte header + payload */
    gyre_u32 flags;
    gyre_u32 params[GYRE_PARAM_WORDS]; /* handler parameters */
    gyre_ring_ref inbox[GYRE_MAX_INBOXES];
    gyre_ring_ref port[GYRE_MAX_PORTS];
} gyre_kernel_desc;

/* Header of a staging record; the payload follows at byte 32. */
typedef struct gyre_record {
    gyre_u32 port;
    gyre_u32 bytes;
    gyre_u32 kind;
    gyre_u32 reserved0;
    gyre_u32 corr[2];
    gyre_u32 reserved1[2];
} gyre_record;

#define GYRE_RECORD_HEADER_BYTES 32u

/* The pending record at the start of scratch: what a terminate left unpublished. */
typedef struct gyre_pending {
    gyre_u32 valid;   /* 1 when the fields below describe unpublished emits */
    gyre_u32 message; /* batch index of the message whose emits are pending */
    gyre_u32 first;   /* first unpublished emit of that message */
    gyre_u32 count;   /* emits the message made */
    gyre_u32 reserved[28];
} gyre_pending;

#define GYRE_SCRATCH_HEADER_BYTES 128u

/* What a handler sees. */
typedef struct gyre_ctx {
    const gyre_kernel_desc *kernel;
    void *state;             /* the kernel's state (device memory), or 0 */
    const gyre_u32 *params;  /* kernel->params */
    unsigned char *records;  /* this message's staging records */
    gyre_u32 emit_count;
    gyre_u32 kind;           /* kind of the message in hand */
    gyre_u32 sender;         /* sender id of the message in hand */
    gyre_u32 corr[2];        /* its correlation id */
} gyre_ctx;

/* Emits `bytes` bytes to `port`, with correlation id `corr_lo, corr_hi`. A message emitted
 * with the correlation id of the message in hand keeps its kind (timed messages carry their
 * send time through a pipeline; ABI.md "Timed messages"). */
GYRE_DEVICE int gyre_emit_corr(gyre_ctx *ctx, gyre_u32 port, const void *data, gyre_u32 bytes,
                               gyre_u32 corr_lo, gyre_u32 corr_hi) {
    const gyre_kernel_desc *k = ctx->kernel;
    if (port >= k->n_ports) {
        return GYRE_ERR_NO_PORT;
    }
    if (bytes > k->port[port].payload_bytes || bytes > k->record_stride - GYRE_RECORD_HEADER_BYTES) {
        return GYRE_ERR_TOO_LARGE;
    }
    if (ctx->emit_count >= k->max_emits) {
        return GYRE_ERR_TOO_MANY;
    }
    unsigned char *rec = ctx->records + (gyre_u64)ctx->emit_count * k->record_stride;
    gyre_record *h = (gyre_record *)rec;
    h->port = port;
    h->bytes = bytes;
    bool same = corr_lo == ctx->corr[0] && corr_hi == ctx->corr[1];
    h->kind = (same && ctx->kind == GYRE_KIND_TIMED) ? GYRE_KIND_TIMED : GYRE_KIND_MESSAGE;
    h->corr[0] = corr_lo;
    h->corr[1] = corr_hi;
    const unsigned char *src = (const unsigned char *)data;
    unsigned char *dst = rec + GYRE_RECORD_HEADER_BYTES;
    for (gyre_u32 i = 0; i < bytes; ++i) {
        dst[i] = src[i];
    }
    ctx->emit_count += 1u;
    return GYRE_OK;
}

/* Emits with the correlation id of the message in hand (replies find their request). */
GYRE_DEVICE int gyre_emit(gyre_ctx *ctx, gyre_u32 port, const void *data, gyre_u32 bytes) {
    return gyre_emit_corr(ctx, port, data, bytes, ctx->corr[0], ctx->corr[1]);
}

__device__ __forceinline__ int gyre_dispatch(gyre_u32 handler, gyre_ctx *ctx, const void *msg,
                                              gyre_u32 bytes);

/* Block state, in shared memory: the leader's cursors and counters, and the batch. */
typedef struct gyre_block {
    gyre_u32 exit;
    gyre_u32 state;
    gyre_u32 epoch;   /* last command epoch acted on */
    gyre_u32 inbox;   /* inbox of the batch */
    gyre_u32 start;   /* position of the batch's first message */
    gyre_u32 n;       /* messages in the batch */
    gyre_u32 rr;      /* next inbox to look at */
    gyre_u32 heartbeat;
    gyre_u32 received, processed, emitted, stalls, errors;
    gyre_u32 batches;
    gyre_u32 heads[GYRE_MAX_INBOXES];
    gyre_producer ports[GYRE_MAX_PORTS];
    gyre_u32 alias[GYRE_MAX_PORTS]; /* ports sharing a ring (the host outbox) share
                                       the first such port's producer */
    gyre_producer dead;
    gyre_u32 full[GYRE_MAX_THREADS];   /* 1: message, 2: cancelled, 0: not published */
    gyre_u32 status[GYRE_MAX_THREADS]; /* handler result */
    gyre_u32 emits[GYRE_MAX_THREADS];  /* emits made */
} gyre_block;

#ifndef GYRE_BLOCK_SHARED
#define GYRE_BLOCK_SHARED(type, name) __shared__ type name
#endif

GYRE_DEVICE GyreControlBlock *gyre_control(const gyre_kernel_desc *k) {
    return (GyreControlBlock *)k->control;
}

GYRE_DEVICE unsigned char *gyre_records(const gyre_kernel_desc *k, gyre_u32 message) {
    return (unsigned char *)k->scratch + GYRE_SCRATCH_HEADER_BYTES +
           (gyre_u64)message * k->max_emits * k->record_stride;
}

/* Stores the counters and heartbeat into the control block: plain (relaxed) stores of
 * locally kept values, never read-modify-writes (ABI.md § 7). */
GYRE_DEVICE void gyre_publish_counters(gyre_block *b, GyreControlBlock *c) {
    gyre_store_relaxed(&c->heartbeat, b->heartbeat, GYRE_SCOPE_SYSTEM);
    gyre_store_relaxed(&c->received, b->received, GYRE_SCOPE_SYSTEM);
    gyre_store_relaxed(&c->processed, b->processed, GYRE_SCOPE_SYSTEM);
    gyre_store_relaxed(&c->emitted, b->emitted, GYRE_SCOPE_SYSTEM);
    gyre_store_relaxed(&c->stalls, b->stalls, GYRE_SCOPE_SYSTEM);
    gyre_store_relaxed(&c->errors, b->errors, GYRE_SCOPE_SYSTEM);
}

/* Acknowledges a command: counters first, then state, then the epoch with release
 * (ABI.md § 7, KernelSide::set_state). The system fence first makes everything the block
 * did (emits published by the leader, records written by other threads before the last
 * barrier) visible before the acknowledgement. */
GYRE_DEVICE void gyre_acknowledge(gyre_block *b, GyreControlBlock *c, gyre_u32 state) {
    b->state = state;
    gyre_publish_counters(b, c);
    gyre_fence_system();
    gyre_store_relaxed(&c->state, state, GYRE_SCOPE_SYSTEM);
    /* ORDERING: release pairs with the host's acquire of ack_epoch in status(). */
    gyre_store_release(&c->ack_epoch, b->epoch, GYRE_SCOPE_SYSTEM);
}

/* Reads the command word if its epoch moved (KernelSide::poll) and applies it. Returns
 * true when the kernel must stop now. */
GYRE_DEVICE bool gyre_poll_command(gyre_block *b, GyreControlBlock *c) {
    gyre_u32 seen = gyre_load_relaxed(&c->command_epoch, GYRE_SCOPE_SYSTEM);
    if (seen == b->epoch) {
        return false;
    }
    /* ORDERING: acquire pairs with the host's release of command_epoch: the command
     * word read after it is at least as new as the epoch. */
    b->epoch = gyre_load_acquire(&c->command_epoch, GYRE_SCOPE_SYSTEM);
    gyre_u32 cmd = gyre_load_relaxed(&c->command, GYRE_SCOPE_SYSTEM);
    switch (cmd) {
    case GYRE_CMD_NONE:
        return false;
    case GYRE_CMD_ACTIVATE:
        gyre_acknowledge(b, c, GYRE_STATE_ACTIVE);
        return false;
    case GYRE_CMD_PAUSE:
        gyre_acknowledge(b, c, GYRE_STATE_PAUSED);
        return false;
    case GYRE_CMD_DRAIN:
        gyre_acknowledge(b, c, GYRE_STATE_DRAINING);
        return false;
    case GYRE_CMD_TERMINATE:
        gyre_acknowledge(b, c, GYRE_STATE_TERMINATED);
        return true;
    default:
        gyre_store_relaxed(&c->error_code, GYRE_FAULT_BAD_COMMAND, GYRE_SCOPE_SYSTEM);
        gyre_acknowledge(b, c, GYRE_STATE_FAULTED);
        return true;
    }
}

/* Exponential backoff for idle polling: a few free spins, then __nanosleep doubling up
 * to 4 us, so an idle kernel reads host memory at most a few hundred thousand times a
 * second instead of saturating the bus. */
GYRE_DEVICE void gyre_backoff(gyre_u32 *spins) {
    gyre_u32 s = *spins;
    if (s >= 16u) {
        gyre_u32 shift = s - 16u < 7u ? s - 16u : 7u;
        __nanosleep(32u << shift);
    }
    if (s < 64u) {
        *spins = s + 1u;
    }
}

/* Leader: waits until an inbox has a message at its head, or the kernel must exit.
 * Sets b->inbox and b->start; returns false to exit. */
GYRE_DEVICE bool gyre_wait_for_work(gyre_block *b, const gyre_kernel_desc *k) {
    GyreControlBlock *c = gyre_control(k);
    gyre_u32 spins = 0;
    /* Busy kernels still read the command word every 32 batches. */
    if ((b->batches & 31u) == 0u && gyre_poll_command(b, c)) {
        return false;
    }
    for (;;) {
        if (b->state == GYRE_STATE_ACTIVE || b->state == GYRE_STATE_DRAINING) {
            for (gyre_u32 i = 0; i < k->n_inboxes; ++i) {
                gyre_u32 in = (b->rr + i) % k->n_inboxes;
                GyreRingHeader *r = gyre_ring(k->inbox[in].header);
                if (gyre_consumer_ready(r, k->inbox[in].scope, b->heads[in])) {
                    b->inbox = in;
                    b->start = b->heads[in];
                    b->rr = in + 1u;
                    return true;
                }
            }
            if (b->state == GYRE_STATE_DRAINING) {
                /* Every inbox is empty and nothing more will come: done. */
                gyre_acknowledge(b, c, GYRE_STATE_TERMINATED);
                return false;
            }
        }
        b->heartbeat += 1u;
        gyre_store_relaxed(&c->heartbeat, b->heartbeat, GYRE_SCOPE_SYSTEM);
        if (gyre_poll_command(b, c)) {
            return false;
        }
        if (b->state == GYRE_STATE_TERMINATED || b->state == GYRE_STATE_FAULTED) {
            return false;
        }
        gyre_backoff(&spins);
    }
}

/* Whether the kernel behind a port stopped for good: its emits can never be consumed. */
GYRE_DEVICE bool gyre_peer_stopped(const gyre_ring_ref *port) {
    if (port->peer_control == 0) {
        return false;
    }
    GyreControlBlock *peer = (GyreControlBlock *)port->peer_control;
    gyre_u32 s = gyre_load_relaxed(&peer->state, GYRE_SCOPE_SYSTEM);
    return s == GYRE_STATE_TERMINATED || s == GYRE_STATE_FAULTED;
}

/* Leader: waits for one free slot in a ring, counting one stall if it had to wait.
 * Returns 1 when there is room, 0 when the kernel must stop (terminate arrived), 2 when
 * the ring's consumer stopped for good (`port` non-null). */
GYRE_DEVICE int gyre_wait_room(gyre_block *b, const gyre_kernel_desc *k, gyre_producer *p,
                               GyreRingHeader *r, gyre_u32 scope, const gyre_ring_ref *port) {
    if (gyre_producer_free(p, r, scope) > 0u) {
        return 1;
    }
    b->stalls += 1u;
    GyreControlBlock *c = gyre_control(k);
    gyre_u32 spins = 0;
    for (;;) {
        if (port != 0 && gyre_peer_stopped(port)) {
            return 2;
        }
        b->heartbeat += 1u;
        gyre_publish_counters(b, c);
        /* A terminate stops now (the caller records what is left, then acknowledges);
         * a pause or drain is acknowledged now and takes effect after this batch, so a
         * host waiting for it never waits on a downstream that waits on the host. */
        gyre_u32 seen = gyre_load_relaxed(&c->command_epoch, GYRE_SCOPE_SYSTEM);
        if (seen != b->epoch) {
            gyre_u32 epoch = gyre_load_acquire(&c->command_epoch, GYRE_SCOPE_SYSTEM);
            gyre_u32 cmd = gyre_load_relaxed(&c->command, GYRE_SCOPE_SYSTEM);
            if (cmd == GYRE_CMD_TERMINATE) {
                return 0;
            }
            (void)epoch;
            if (gyre_poll_command(b, c)) {
                return 0;
            }
        }
        gyre_backoff(&spins);
        if (gyre_producer_free(p, r, scope) > 0u) {
            return 1;
        }
    }
}

/* Leader: copies message `slot` to the dead-letter ring with a reason. Returns false when
 * the kernel must stop first. */
GYRE_DEVICE bool gyre_dead_letter(gyre_block *b, const gyre_kernel_desc *k, gyre_u32 reason,
                                  gyre_u32 code, gyre_u32 port, gyre_u32 kind,
                                  const gyre_u32 corr[2], const unsigned char *payload,
                                  gyre_u32 bytes) {
    GyreRingHeader *dl = gyre_ring(k->dead_letters);
    if (gyre_wait_room(b, k, &b->dead, dl, GYRE_SCOPE_SYSTEM, 0) != 1) {
        return false;
    }
    /* The dead-letter slot holds a GyreDeadLetterPrefix, then the original payload. */
    GyreSlotHeader *s = gyre_slot(dl, b->dead.tail);
    GyreDeadLetterPrefix *prefix = (GyreDeadLetterPrefix *)gyre_slot_payload(s);
    gyre_u32 room = gyre_ring_payload_bytes(dl) - GYRE_DEAD_LETTER_PREFIX_BYTES;
    gyre_u32 n = bytes < room ? bytes : room;
    prefix->reason = reason;
    prefix->code = code;
    prefix->port = port;
    prefix->kind = kind;
    unsigned char *dst = (unsigned char *)(prefix + 1);
    for (gyre_u32 i = 0; i < n; ++i) {
        dst[i] = payload[i];
    }
    /* The payload is already in place: push copies it onto itself (same addresses),
     * zeroes the rest of the slot, writes tag and corr, and publishes the stamp. */
    gyre_producer_push(&b->dead, dl, GYRE_SCOPE_SYSTEM,
                       (k->kernel_id << GYRE_TAG_SENDER_SHIFT) | GYRE_KIND_MESSAGE, corr[0],
                       corr[1], (const unsigned char *)prefix,
                       GYRE_DEAD_LETTER_PREFIX_BYTES + n);
    return true;
}

/* Leader: publishes the emits of batch message `m` from emit `first` on. Returns the
 * index of the first emit not published (== count when all went out); stops early only
 * when a terminate arrived while it waited for room. */
GYRE_DEVICE gyre_u32 gyre_publish_emits(gyre_block *b, const gyre_kernel_desc *k, gyre_u32 m,
                                        gyre_u32 first, gyre_u32 count) {
    unsigned char *records = gyre_records(k, m);
    for (gyre_u32 e = first; e < count; ++e) {
        unsigned char *rec = records + (gyre_u64)e * k->record_stride;
        const gyre_record *h = (const gyre_record *)rec;
        const unsigned char *payload = rec + GYRE_RECORD_HEADER_BYTES;
        const gyre_ring_ref *port = &k->port[h->port];
        gyre_u32 tag = (k->kernel_id << GYRE_TAG_SENDER_SHIFT) | h->kind;
        if (port->kind == GYRE_PORT_DEAD) {
            if (!gyre_dead_letter(b, k, GYRE_DEAD_PORT, 0, h->port, h->kind, h->corr, payload,
                                  h->bytes)) {
                return e;
            }
            b->emitted += 1u;
            continue;
        }
        GyreRingHeader *r = gyre_ring(port->header);
        gyre_producer *p = &b->ports[b->alias[h->port]];
        int room = gyre_wait_room(b, k, p, r, port->scope, port);
        if (room == 0) {
            return e;
        }
        if (room == 2) {
            if (!gyre_dead_letter(b, k, GYRE_DEAD_STOPPED, 0, h->port, h->kind, h->corr,
                                  payload, h->bytes)) {
                return e;
            }
            b->emitted += 1u;
            continue;
        }
        gyre_producer_push(p, r, port->scope, tag, h->corr[0], h->corr[1], payload, h->bytes);
        b->emitted += 1u;
    }
    return count;
}

/* Leader: records what a terminate left unpublished, for the host to read back. */
GYRE_DEVICE void gyre_set_pending(const gyre_kernel_desc *k, gyre_u32 m, gyre_u32 first,
                                  gyre_u32 count) {
    gyre_pending *pending = (gyre_pending *)k->scratch;
    pending->message = m;
    pending->first = first;
    pending->count = count;
    pending->valid = 1u;
}

GYRE_DEVICE void gyre_run_handler(const gyre_kernel_desc *k, gyre_block *b, gyre_u32 m) {
    GyreRingHeader *r = gyre_ring(k->inbox[b->inbox].header);
    GyreSlotHeader *s = gyre_slot(r, b->start + m);
    gyre_ctx ctx;
    ctx.kernel = k;
    ctx.state = (void *)k->state;
    ctx.params = k->params;
    ctx.records = gyre_records(k, m);
    ctx.emit_count = 0;
    ctx.kind = s->tag & GYRE_TAG_KIND_MASK;
    ctx.sender = s->tag >> GYRE_TAG_SENDER_SHIFT;
    ctx.corr[0] = s->corr[0];
    ctx.corr[1] = s->corr[1];
    b->status[m] = (gyre_u32)gyre_dispatch(k->handler, &ctx, gyre_slot_payload(s),
                                           gyre_ring_payload_bytes(r));
    b->emits[m] = ctx.emit_count;
}

/* Leader: after the handlers of a batch, delivers what they produced in message order
 * and frees the batch's inbox positions. Returns false when the kernel must stop. */
GYRE_DEVICE bool gyre_finish_batch(gyre_block *b, const gyre_kernel_desc *k) {
    GyreControlBlock *c = gyre_control(k);
    const gyre_ring_ref *in = &k->inbox[b->inbox];
    GyreRingHeader *r = gyre_ring(in->header);
    gyre_u32 done = 0; /* messages fully delivered; their positions can be freed */
    bool stop = false;
    for (gyre_u32 m = 0; m < b->n; ++m) {
        if (b->full[m] != 1u) {
            done = m + 1u; /* a cancelled claim: nothing to deliver */
            continue;
        }
        GyreSlotHeader *s = gyre_slot(r, b->start + m);
        const bool faults = b->status[m] == (gyre_u32)GYRE_FAULT_KERNEL;
        if (b->status[m] != 0u) {
            if (!gyre_dead_letter(b, k, GYRE_DEAD_HANDLER_ERROR, b->status[m], 0,
                                  s->tag & GYRE_TAG_KIND_MASK, s->corr, gyre_slot_payload(s),
                                  gyre_ring_payload_bytes(r))) {
                stop = true; /* the message stays in the inbox, undelivered */
                break;
            }
            b->errors += 1u;
        }
        gyre_u32 sent = gyre_publish_emits(b, k, m, 0, b->emits[m]);
        b->processed += 1u;
        done = m + 1u;
        if (sent < b->emits[m]) {
            gyre_set_pending(k, m, sent, b->emits[m]);
        }
        if (faults) {
            /* The handler faulted its kernel: its message went to the dead letters like a
             * failed one (what it emitted stands), the rest of the batch stays in the
             * inbox (their emits are dropped), and the kernel stops Faulted. */
            gyre_store_relaxed(&c->error_code, GYRE_FAULT_HANDLER_PANIC, GYRE_SCOPE_SYSTEM);
            gyre_acknowledge(b, c, GYRE_STATE_FAULTED);
            stop = true;
            break;
        }
        if (sent < b->emits[m]) {
            stop = true;
            break;
        }
    }
    /* Cancelled claims right after the last delivered message are free too. */
    if (!stop) {
        done = b->n;
    }
    b->heads[b->inbox] = b->start + done;
    /* ORDERING: release, after every read of the freed slots (the barrier before this
     * function ordered the other threads' reads before the leader's store). */
    gyre_consumer_release(r, in->scope, b->heads[b->inbox]);
    b->heartbeat += 1u;
    b->batches += 1u;
    gyre_publish_counters(b, c);
    if (stop) {
        /* Terminate arrived while waiting for room: take it now. */
        gyre_poll_command(b, c);
        if (b->state != GYRE_STATE_TERMINATED && b->state != GYRE_STATE_FAULTED) {
            gyre_acknowledge(b, c, GYRE_STATE_TERMINATED);
        }
        return false;
    }
    return true;
}

/* The resident loop of block blockIdx.x: kernel blockIdx.x of the group. */
GYRE_DEVICE void gyre_run_kernel(const gyre_kernel_desc *kernels, gyre_u32 kernel_count) {
    GYRE_BLOCK_SHARED(gyre_block, b);
    const gyre_u32 tid = threadIdx.x;
    const gyre_kernel_desc *k = &kernels[blockIdx.x < kernel_count ? blockIdx.x : 0u];
    if (tid == 0u) {
        GyreControlBlock *c = gyre_control(k);
        b.exit = blockIdx.x >= kernel_count ? 1u : 0u;
        b.state = GYRE_STATE_LAUNCHED;
        /* Commands issued after the last acknowledgement are still to apply: zero on a
         * first launch, the terminate that ended the previous grid on a relaunch. */
        b.epoch = gyre_load_acquire(&c->ack_epoch, GYRE_SCOPE_SYSTEM);
        b.rr = 0;
        b.n = 0;
        b.batches = 0;
        /* Resume the control block's counters (a relaunch after restart continues them). */
        b.heartbeat = gyre_load_relaxed(&c->heartbeat, GYRE_SCOPE_SYSTEM);
        b.received = gyre_load_relaxed(&c->received, GYRE_SCOPE_SYSTEM);
        b.processed = gyre_load_relaxed(&c->processed, GYRE_SCOPE_SYSTEM);
        b.emitted = gyre_load_relaxed(&c->emitted, GYRE_SCOPE_SYSTEM);
        b.stalls = gyre_load_relaxed(&c->stalls, GYRE_SCOPE_SYSTEM);
        b.errors = gyre_load_relaxed(&c->errors, GYRE_SCOPE_SYSTEM);
        for (gyre_u32 i = 0; i < k->n_inboxes; ++i) {
            b.heads[i] = gyre_load_relaxed(&gyre_ring(k->inbox[i].header)->head,
                                           k->inbox[i].scope);
        }
        for (gyre_u32 i = 0; i < k->n_ports; ++i) {
            /* One producer per ring: every port bound to the host shares the outbox. */
            b.alias[i] = i;
            for (gyre_u32 j = 0; j < i; ++j) {
                if (k->port[j].header == k->port[i].header) {
                    b.alias[i] = j;
                    break;
                }
            }
            if (k->port[i].kind != GYRE_PORT_DEAD && b.alias[i] == i) {
                gyre_producer_init(&b.ports[i], gyre_ring(k->port[i].header), k->port[i].scope);
            }
        }
        gyre_producer_init(&b.dead, gyre_ring(k->dead_letters), GYRE_SCOPE_SYSTEM);
        if (b.exit == 0u) {
            /* Resident: acknowledge the launch (epoch 0, state Launched). */
            gyre_acknowledge(&b, c, GYRE_STATE_LAUNCHED);
        }
    }
    const bool sequential = (k->flags & GYRE_FLAG_SEQUENTIAL) != 0u;
    for (;;) {
        if (tid == 0u && b.exit == 0u && !gyre_wait_for_work(&b, k)) {
            b.exit = 1u;
        }
        __syncthreads();
        if (b.exit != 0u) {
            break;
        }
        /* Every thread tests one position of the batch: one round trip for the batch. */
        if (tid < k->quantum) {
            GyreRingHeader *r = gyre_ring(k->inbox[b.inbox].header);
            gyre_u32 pos = b.start + tid;
            gyre_u32 full = 0;
            /* Never look past the ring's capacity: a lap ahead is not this batch. */
            if (tid < gyre_ring_capacity(r) && gyre_consumer_ready(r, k->inbox[b.inbox].scope, pos)) {
                full = (gyre_slot(r, pos)->tag & GYRE_TAG_KIND_MASK) == GYRE_KIND_CANCELLED ? 2u : 1u;
            }
            b.full[tid] = full;
        }
        __syncthreads();
        if (tid == 0u) {
            gyre_u32 n = 0;
            while (n < k->quantum && b.full[n] != 0u) {
                if (b.full[n] == 1u) {
                    b.received += 1u;
                }
                n += 1u;
            }
            b.n = n;
        }
        __syncthreads();
        if (sequential) {
            if (tid == 0u) {
                for (gyre_u32 m = 0; m < b.n; ++m) {
                    if (b.full[m] == 1u) {
                        gyre_run_handler(k, &b, m);
                    }
                }
            }
        } else if (tid < b.n && b.full[tid] == 1u) {
            gyre_run_handler(k, &b, tid);
        }
        __syncthreads();
        if (tid == 0u && !gyre_finish_batch(&b, k)) {
            b.exit = 1u;
        }
    }
}

#endif /* GYRE_PERSISTENT_CUH */
