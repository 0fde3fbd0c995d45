/*
 * gyre_emu.h: the thin shim that compiles gyre's CUDA C for the host, so the device side
 * of the ring protocol can run in threads against the Rust host side (the conformance
 * tests, and `CudaDevice::emulated()` for developing handlers without a GPU).
 *
 * This is an EMULATION of a GPU, not a GPU: a block is a set of std::threads sharing a
 * barrier (__syncthreads) and a shared-memory buffer, the ordering primitives of
 * ring.cuh become GCC __atomic builtins with the same orderings, __nanosleep yields or
 * sleeps. Warp-level behaviour, memory scopes and PCIe latency are not emulated.
 *
 * Force-included (g++ -include gyre_emu.h) before the generated group source.
 */
#ifndef GYRE_EMU_H
#define GYRE_EMU_H

#define GYRE_EMULATED 1

#include <barrier>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
/* The single-precision C math functions CUDA device code calls (fminf, sqrtf, expf, ...),
 * global as on the device. Results follow the host's libm, which may differ from the
 * device's in the last place for transcendental functions (exact ones such as fminf or
 * sqrtf agree). */
#include <math.h>
#include <sched.h>
#include <thread>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

struct gyre_dim3 {
    unsigned x, y, z;
};

inline thread_local gyre_dim3 threadIdx = {0, 0, 0};
inline thread_local gyre_dim3 blockIdx = {0, 0, 0};
inline thread_local gyre_dim3 blockDim = {1, 1, 1};
inline thread_local gyre_dim3 gridDim = {1, 1, 1};
inline thread_local std::barrier<> *gyre_emu_barrier = nullptr;
inline thread_local unsigned char *gyre_emu_shared = nullptr;

inline void __syncthreads() { gyre_emu_barrier->arrive_and_wait(); }

inline void __nanosleep(unsigned ns) {
    if (ns < 1000u) {
        sched_yield();
    } else {
        std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
    }
}

inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* IEEE round-to-nearest single operations, never contracted into an FMA (the emulation
 * is compiled with -ffp-contract=off). */
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }

/* Device-scope atomics used by handlers on their own state (one block per kernel: the
 * other side of these is another thread of the same block). */
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicMax(unsigned *p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline unsigned atomicMin(unsigned *p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

/* Shared memory: one buffer per block, carved in declaration order (every thread of a
 * block declares the same variables in the same order, so they get the same address). */
inline thread_local std::size_t gyre_emu_shared_used = 0;
inline void *gyre_emu_shared_alloc(std::size_t bytes, std::size_t align) {
    std::size_t at = (gyre_emu_shared_used + align - 1) & ~(align - 1);
    gyre_emu_shared_used = at + bytes;
    return gyre_emu_shared + at;
}
#define GYRE_BLOCK_SHARED(type, name) \
    static_assert(sizeof(type) <= 48 * 1024, "shared memory over 48 KiB"); \
    type &name = *static_cast<type *>(gyre_emu_shared_alloc(sizeof(type), alignof(type)))

#endif /* GYRE_EMU_H */
