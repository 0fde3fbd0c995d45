/*
 * builtins.cuh: the device side of gyre's built-in kernels.
 *
 * The same semantics and the same float operations as the CPU reference in
 * runtime/src/builtins.rs (`Builtin::reference`); the conformance test feeds both the
 * same inputs and compares the bytes. Every handler has the signature gyre_dispatch
 * calls:
 *
 *   __device__ int gyre_builtin_NAME(gyre_ctx *ctx, const void *msg, gyre_u32 bytes);
 *
 * where `msg` is the payload of the inbox slot and `bytes` the slot's payload size (the
 * message is at its start). Parameters are ctx->params[0..16], laid out exactly as
 * `Builtin::params` writes them (floats as their IEEE bit patterns):
 *
 *   echo       [0] bytes
 *   affine     [0] a       [1] b
 *   filter     [0] lo      [1] hi
 *   window     [0] size
 *   histogram  [0] bins    [1] lo      [2] hi (unused here)  [3] every  [4] scale
 *   scatter    [0] ports
 *   gather     (none)
 *
 * Float arithmetic is written with __fmul_rn/__fadd_rn, which are never contracted into
 * an FMA, so the device rounds exactly like the Rust reference. Handlers return GYRE_OK,
 * a GYRE_BUILTIN_ERR_* code for nonsense parameters or a message that cannot be what the
 * kernel reads, or the error of gyre_emit; a nonzero result sends the message to the
 * dead letters.
 *
 * Needs no header but what persistent.cuh brings (which includes it first), so NVRTC
 * compiles it as is; the host emulation compiles it with g++ and gyre_emu.h.
 */
#ifndef GYRE_BUILTINS_CUH
#define GYRE_BUILTINS_CUH

#ifndef GYRE_PERSISTENT_CUH
#error "include persistent.cuh before builtins.cuh"
#endif

/* Handler results of the built-ins (GYRE_BUILTIN_ERR_PARAMS, _INPUT, _STATE) come from
 * gyre_abi.h, generated from gyre_runtime::abi::status. */

#define GYRE_BUILTIN_MAX_BINS 8u

/* Largest finite f32. */
#define GYRE_F32_MAX 3.40282346638528859811704183484516925e+38f

#ifndef GYRE_BUILTIN_FN
#define GYRE_BUILTIN_FN __device__ inline
#endif

/* The record every record-based built-in reads and writes. 16 bytes. */
typedef struct gyre_rec {
    gyre_u32 key;
    gyre_u32 seq;
    float value;
    gyre_u32 aux;
} gyre_rec;

#define GYRE_REC_BYTES 16u

/* What `window` emits per full window; also its state (the window being filled). */
typedef struct gyre_aggregate {
    gyre_u32 window;    /* index of the window, from 0 */
    gyre_u32 count;     /* records in it (== size when emitted) */
    float sum;          /* __fadd_rn in arrival order */
    float min;
    float max;
    gyre_u32 first_seq; /* seq of its first record */
    gyre_u32 last_seq;  /* seq of its last record */
    gyre_u32 reserved;  /* zero */
} gyre_aggregate;

#define GYRE_AGGREGATE_BYTES 32u

/* What `histogram` emits every `every` records; also its state. Counts are cumulative.
 * 40 bytes. */
typedef struct gyre_histogram {
    gyre_u32 total;                        /* records counted so far (wrapping) */
    gyre_u32 bins;                         /* bins in use; later counts are zero */
    gyre_u32 counts[GYRE_BUILTIN_MAX_BINS]; /* per bin (wrapping) */
} gyre_histogram;

#define GYRE_HISTOGRAM_BYTES 40u

GYRE_STATIC_ASSERT(sizeof(float) == 4, "sizeof(float) == 4");
GYRE_STATIC_ASSERT(sizeof(gyre_rec) == GYRE_REC_BYTES, "sizeof(gyre_rec) == 16");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_rec, key) == 0, "offsetof(gyre_rec, key) == 0");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_rec, seq) == 4, "offsetof(gyre_rec, seq) == 4");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_rec, value) == 8, "offsetof(gyre_rec, value) == 8");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_rec, aux) == 12, "offsetof(gyre_rec, aux) == 12");
GYRE_STATIC_ASSERT(sizeof(gyre_aggregate) == GYRE_AGGREGATE_BYTES, "sizeof(gyre_aggregate) == 32");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, window) == 0, "offsetof(gyre_aggregate, window) == 0");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, count) == 4, "offsetof(gyre_aggregate, count) == 4");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, sum) == 8, "offsetof(gyre_aggregate, sum) == 8");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, min) == 12, "offsetof(gyre_aggregate, min) == 12");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, max) == 16, "offsetof(gyre_aggregate, max) == 16");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, first_seq) == 20, "offsetof(gyre_aggregate, first_seq) == 20");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, last_seq) == 24, "offsetof(gyre_aggregate, last_seq) == 24");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_aggregate, reserved) == 28, "offsetof(gyre_aggregate, reserved) == 28");
GYRE_STATIC_ASSERT(sizeof(gyre_histogram) == GYRE_HISTOGRAM_BYTES, "sizeof(gyre_histogram) == 40");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_histogram, total) == 0, "offsetof(gyre_histogram, total) == 0");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_histogram, bins) == 4, "offsetof(gyre_histogram, bins) == 4");
GYRE_STATIC_ASSERT(GYRE_OFFSETOF(gyre_histogram, counts) == 8, "offsetof(gyre_histogram, counts) == 8");

/* The f32 whose IEEE bit pattern is `bits` (a float parameter). A union, not
 * __uint_as_float, so the host emulation compiles it too. */
GYRE_DEVICE float gyre_f32(gyre_u32 bits) {
    union {
        gyre_u32 u;
        float f;
    } pun;
    pun.u = bits;
    return pun.f;
}

/* echo: emits the first params[0] bytes of the message, unchanged, to port 0. */
GYRE_BUILTIN_FN int gyre_builtin_echo(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 n = ctx->params[0];
    if (n == 0u) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (bytes < n) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    return gyre_emit(ctx, 0u, msg, n);
}

/* affine: value' = a * value + b, rounded after the multiply and after the add (never
 * fused); key, seq and aux unchanged; port 0. */
GYRE_BUILTIN_FN int gyre_builtin_affine(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const float a = gyre_f32(ctx->params[0]);
    const float b = gyre_f32(ctx->params[1]);
    gyre_rec out = *(const gyre_rec *)msg;
    out.value = __fadd_rn(__fmul_rn(a, out.value), b);
    return gyre_emit(ctx, 0u, &out, GYRE_REC_BYTES);
}

/* filter: forwards the record unchanged to port 0 iff lo <= value < hi (NaN fails). */
GYRE_BUILTIN_FN int gyre_builtin_filter(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const float lo = gyre_f32(ctx->params[0]);
    const float hi = gyre_f32(ctx->params[1]);
    const float v = ((const gyre_rec *)msg)->value;
    if (lo <= v && v < hi) {
        return gyre_emit(ctx, 0u, msg, GYRE_REC_BYTES);
    }
    return GYRE_OK;
}

/* window (sequential): a tumbling window of params[0] records. The state is the window
 * being filled (zeroed at launch: window 0, count 0); when it holds `size` records it is
 * emitted to port 0 and the next window starts empty. A partial window is never
 * emitted. */
GYRE_BUILTIN_FN int gyre_builtin_window(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 size = ctx->params[0];
    if (size == 0u) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (ctx->state == 0) {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const gyre_rec *r = (const gyre_rec *)msg;
    gyre_aggregate *s = (gyre_aggregate *)ctx->state;
    const float v = r->value;
    if (s->count == 0u) {
        s->sum = v;
        s->min = v;
        s->max = v;
        s->first_seq = r->seq;
    } else {
        s->sum = __fadd_rn(s->sum, v);
        s->min = v < s->min ? v : s->min;
        s->max = v > s->max ? v : s->max;
    }
    s->last_seq = r->seq;
    s->count += 1u;
    if (s->count < size) {
        return GYRE_OK;
    }
    const gyre_aggregate out = *s;
    s->window = out.window + 1u;
    s->count = 0u;
    s->sum = 0.0f;
    s->min = 0.0f;
    s->max = 0.0f;
    s->first_seq = 0u;
    s->last_seq = 0u;
    return gyre_emit(ctx, 0u, &out, GYRE_AGGREGATE_BYTES);
}

/* histogram (sequential): counts each record's value into one of params[0] bins over
 * [lo, hi): x = (value - lo) * scale with scale = bins / (hi - lo) computed by the host
 * in f32 (params[4]); bin 0 when !(x >= 0) (below lo, or NaN), the last bin when
 * x >= bins (at or above hi), else (u32)x. Counts are cumulative; after every `every`
 * records (total % every == 0) the histogram is emitted to port 0. */
GYRE_BUILTIN_FN int gyre_builtin_histogram(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 bins = ctx->params[0];
    const float lo = gyre_f32(ctx->params[1]);
    const gyre_u32 every = ctx->params[3];
    const float scale = gyre_f32(ctx->params[4]);
    if (bins == 0u || bins > GYRE_BUILTIN_MAX_BINS || every == 0u ||
        !(scale > 0.0f && scale <= GYRE_F32_MAX)) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (ctx->state == 0) {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const float v = ((const gyre_rec *)msg)->value;
    const float x = __fmul_rn(__fadd_rn(v, -lo), scale);
    gyre_u32 idx = 0u;
    if (x >= 0.0f) {
        /* x < bins <= 8 here, so the conversion truncates (== floor) without overflow. */
        idx = x >= (float)bins ? bins - 1u : (gyre_u32)x;
    }
    gyre_histogram *s = (gyre_histogram *)ctx->state;
    s->counts[idx] += 1u;
    s->total += 1u;
    s->bins = bins;
    if (s->total % every != 0u) {
        return GYRE_OK;
    }
    return gyre_emit(ctx, 0u, s, GYRE_HISTOGRAM_BYTES);
}

/* scatter: forwards the record unchanged to port key % params[0]. */
GYRE_BUILTIN_FN int gyre_builtin_scatter(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 ports = ctx->params[0];
    if (ports == 0u || ports > ctx->kernel->n_ports) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const gyre_u32 key = ((const gyre_rec *)msg)->key;
    return gyre_emit(ctx, key % ports, msg, GYRE_REC_BYTES);
}

/* gather: forwards the record unchanged to port 0 (fed by several upstream kernels; the
 * order across its inboxes is not defined). */
GYRE_BUILTIN_FN int gyre_builtin_gather(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < GYRE_REC_BYTES) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    return gyre_emit(ctx, 0u, msg, GYRE_REC_BYTES);
}

#endif /* GYRE_BUILTINS_CUH */
