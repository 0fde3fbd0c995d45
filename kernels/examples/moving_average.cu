/*
 * moving_average.cu: an example of a user CUDA C handler for gyre.
 *
 * A kernel's handler is one __device__ function. It gets the message in hand (`msg`, the
 * slot's payload of `bytes` bytes), the kernel's state and parameters through `ctx`, and
 * emits with gyre_emit (to a port; the correlation id of the message in hand travels
 * with it). It returns 0, or an error code: the message then goes to the dead letters.
 *
 * This one keeps an exponential moving average per key bucket in the kernel's state and
 * emits the updated average. Launch it sequential (state is updated in arrival order)
 * with state_bytes = 64 * 4 and params[0] = the smoothing factor's bit pattern.
 *
 * CI compiles it through the runtime's NVRTC path and ptxas (runtime/tests/cuda_nvrtc.rs).
 */
struct ma_sample {
    gyre_u32 key;
    float value;
};

struct ma_out {
    gyre_u32 key;
    float average;
};

__device__ int moving_average(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(ma_sample) || ctx->state == 0) {
        return 1;
    }
    const ma_sample *in = (const ma_sample *)msg;
    union {
        gyre_u32 bits;
        float value;
    } alpha;
    alpha.bits = ctx->params[0];
    float *averages = (float *)ctx->state;
    gyre_u32 bucket = in->key % 64u;
    float next = __fadd_rn(averages[bucket], __fmul_rn(alpha.value, __fadd_rn(in->value, -averages[bucket])));
    averages[bucket] = next;
    ma_out out;
    out.key = in->key;
    out.average = next;
    return gyre_emit(ctx, 0, &out, sizeof(out));
}
