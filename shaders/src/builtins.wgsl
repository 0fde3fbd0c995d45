// builtins.wgsl: the WGSL side of gyre's built-in kernels.
//
// The same semantics, parameter words, error codes and output layouts as the CPU
// reference in runtime/src/builtins.rs (`Builtin::reference`) and the CUDA device
// functions in kernels/include/builtins.cuh; the conformance test feeds every backend the
// same inputs and compares the bytes. Every handler has the signature the tick loop
// (tick.wgsl, concatenated before this file) calls:
//
//   fn gyre_builtin_NAME(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>,
//                        bytes: u32) -> u32
//
// where `msg` holds the payload of the inbox slot as little-endian u32 words and `bytes`
// is the slot's payload size (the message is at its start). Parameters are
// gyre_param(ctx, 0 .. 16), laid out exactly as `Builtin::params` writes them (floats as
// their IEEE bit patterns):
//
//   echo       [0] bytes
//   affine     [0] a       [1] b
//   filter     [0] lo      [1] hi
//   window     [0] size
//   histogram  [0] bins    [1] lo      [2] hi (unused here)  [3] every  [4] scale
//   scatter    [0] ports
//   gather     (none)
//
// Handlers return GYRE_OK, a GYRE_BUILTIN_ERR_* code for nonsense parameters, a message
// that cannot be what the kernel reads or missing state, or the error of gyre_emit; a
// nonzero result sends the message to the dead letters. Every emit keeps the correlation
// id of the message in hand (gyre_emit does that).
//
// Float rules. WGSL lets an implementation flush subnormals and assume that no NaN or
// infinity occurs, so everything that is not arithmetic is done on the bit patterns:
// floats are carried as u32 words and copied bit for bit (NaN payloads included), and
// every comparison goes through gyre_bi_lt / gyre_bi_le, which order the bit patterns
// exactly like IEEE 754 (NaN compares false, -0 == +0, subnormals are not flushed). Only
// the arithmetic itself (affine's multiply and add, window's sum, histogram's bin
// position) uses f32 operations; WGSL rounds `*` and `+` correctly, each product and sum
// is written as its own statement through a temporary, and the reference rounds the same
// way. What WGSL cannot promise: an implementation may still contract a multiply and a
// following add into an FMA (SPIR-V from naga carries no NoContraction decoration), may
// flush subnormal operands or results to zero, and a NaN result may have another payload
// than on the CPU. The conformance test states the tolerance where a driver does that.
//
// Output messages are written into the first words of *msg, emitted, and the words are
// restored before returning, so the handler needs no second GyreMsg (which could be as
// large as the largest slot payload of the group) and *msg is unchanged afterwards.

// Handler results of the built-ins (GYRE_BUILTIN_ERR_PARAMS, _INPUT, _STATE) come from
// gyre_abi.wgsl, generated from gyre_runtime::abi::status.

// Most bins of a histogram (MAX_BINS) and most ports of a scatter (MAX_SCATTER_PORTS).
const GYRE_BUILTIN_MAX_BINS: u32 = 8u;
const GYRE_BUILTIN_MAX_SCATTER_PORTS: u32 = 8u;

// Bytes of a record (`Record`: key, seq, value, aux), an aggregate (`Aggregate`) and a
// histogram (`Histogram`).
const GYRE_BUILTIN_REC_BYTES: u32 = 16u;
const GYRE_BUILTIN_AGGREGATE_BYTES: u32 = 32u;
const GYRE_BUILTIN_HISTOGRAM_BYTES: u32 = 40u;

// State words of window (an Aggregate) and histogram (a Histogram): `state_bytes / 4`.
const GYRE_BUILTIN_WINDOW_STATE_WORDS: u32 = 8u;
const GYRE_BUILTIN_HISTOGRAM_STATE_WORDS: u32 = 10u;

// Word indices of a record.
const GYRE_BI_REC_KEY: u32 = 0u;
const GYRE_BI_REC_SEQ: u32 = 1u;
const GYRE_BI_REC_VALUE: u32 = 2u;

// Word indices of an aggregate (window's state and output).
const GYRE_BI_AGG_WINDOW: u32 = 0u;
const GYRE_BI_AGG_COUNT: u32 = 1u;
const GYRE_BI_AGG_SUM: u32 = 2u;
const GYRE_BI_AGG_MIN: u32 = 3u;
const GYRE_BI_AGG_MAX: u32 = 4u;
const GYRE_BI_AGG_FIRST_SEQ: u32 = 5u;
const GYRE_BI_AGG_LAST_SEQ: u32 = 6u;
const GYRE_BI_AGG_RESERVED: u32 = 7u;

// Word indices of a histogram (histogram's state and output); counts[i] is word 2 + i.
const GYRE_BI_HIST_TOTAL: u32 = 0u;
const GYRE_BI_HIST_BINS: u32 = 1u;
const GYRE_BI_HIST_COUNTS: u32 = 2u;

// Bit pattern of the largest finite f32 (f32::MAX).
const GYRE_BI_F32_MAX_BITS: u32 = 0x7f7fffffu;
const GYRE_BI_F32_SIGN: u32 = 0x80000000u;

// Whether the f32 with bit pattern `b` is a NaN.
fn gyre_bi_is_nan(b: u32) -> bool {
    return (b & 0x7fffffffu) > 0x7f800000u;
}

// A key that orders non-NaN f32 bit patterns like their values: the magnitude, negated
// for a set sign bit, so -0 and +0 both give 0 and subnormals keep their order.
fn gyre_bi_key(b: u32) -> i32 {
    let mag = bitcast<i32>(b & 0x7fffffffu);
    return select(mag, -mag, (b & GYRE_BI_F32_SIGN) != 0u);
}

// IEEE `a < b` on bit patterns (false if either is NaN).
fn gyre_bi_lt(a: u32, b: u32) -> bool {
    return !gyre_bi_is_nan(a) && !gyre_bi_is_nan(b) && gyre_bi_key(a) < gyre_bi_key(b);
}

// IEEE `a <= b` on bit patterns (false if either is NaN).
fn gyre_bi_le(a: u32, b: u32) -> bool {
    return !gyre_bi_is_nan(a) && !gyre_bi_is_nan(b) && gyre_bi_key(a) <= gyre_bi_key(b);
}

// echo: emits the first params[0] bytes of the message, unchanged, to port 0.
fn gyre_builtin_echo(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let n = gyre_param(ctx, 0u);
    if n == 0u {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    // The second test cannot fail for a slot of the group (bytes <= 4 * GYRE_MSG_WORDS);
    // it keeps the emit inside *msg whatever `bytes` says.
    if bytes < n || n > GYRE_MSG_WORDS * 4u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    return gyre_emit(ctx, 0u, msg, n);
}

// affine: value' = a * value + b, rounded after the multiply and after the add (two
// statements, never fused on purpose; see the float rules above); key, seq and aux
// unchanged; port 0.
fn gyre_builtin_affine(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let a = bitcast<f32>(gyre_param(ctx, 0u));
    let b = bitcast<f32>(gyre_param(ctx, 1u));
    let value_bits = (*msg).w[GYRE_BI_REC_VALUE];
    let product = a * bitcast<f32>(value_bits);
    let sum = product + b;
    (*msg).w[GYRE_BI_REC_VALUE] = bitcast<u32>(sum);
    let result = gyre_emit(ctx, 0u, msg, GYRE_BUILTIN_REC_BYTES);
    (*msg).w[GYRE_BI_REC_VALUE] = value_bits;
    return result;
}

// filter: forwards the record unchanged to port 0 iff lo <= value && value < hi (NaN
// never passes).
fn gyre_builtin_filter(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let lo = gyre_param(ctx, 0u);
    let hi = gyre_param(ctx, 1u);
    let v = (*msg).w[GYRE_BI_REC_VALUE];
    if gyre_bi_le(lo, v) && gyre_bi_lt(v, hi) {
        return gyre_emit(ctx, 0u, msg, GYRE_BUILTIN_REC_BYTES);
    }
    return GYRE_OK;
}

// window (sequential): a tumbling window of params[0] records. The state is the
// Aggregate being filled (8 words, zeroed at launch: window 0, count 0); the first record
// of a window sets sum, min and max, later ones add to the sum (in arrival order) and
// replace min if `v < min`, max if `v > max` (so a NaN never replaces, a first NaN
// stays). When it holds `size` records it is emitted to port 0 and the next window
// starts empty. A partial window is never emitted.
fn gyre_builtin_window(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let size = gyre_param(ctx, 0u);
    if size == 0u {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (*ctx).state_words < GYRE_BUILTIN_WINDOW_STATE_WORDS {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let v = (*msg).w[GYRE_BI_REC_VALUE];
    let seq = (*msg).w[GYRE_BI_REC_SEQ];
    let window = gyre_state_load(ctx, GYRE_BI_AGG_WINDOW);
    var count = gyre_state_load(ctx, GYRE_BI_AGG_COUNT);
    var sum_bits = v;
    var min_bits = v;
    var max_bits = v;
    var first_seq = seq;
    if count != 0u {
        let prev_sum = bitcast<f32>(gyre_state_load(ctx, GYRE_BI_AGG_SUM));
        let next_sum = prev_sum + bitcast<f32>(v);
        sum_bits = bitcast<u32>(next_sum);
        let prev_min = gyre_state_load(ctx, GYRE_BI_AGG_MIN);
        let prev_max = gyre_state_load(ctx, GYRE_BI_AGG_MAX);
        min_bits = select(prev_min, v, gyre_bi_lt(v, prev_min));
        max_bits = select(prev_max, v, gyre_bi_lt(prev_max, v));
        first_seq = gyre_state_load(ctx, GYRE_BI_AGG_FIRST_SEQ);
    }
    count += 1u;
    if count < size {
        gyre_state_store(ctx, GYRE_BI_AGG_COUNT, count);
        gyre_state_store(ctx, GYRE_BI_AGG_SUM, sum_bits);
        gyre_state_store(ctx, GYRE_BI_AGG_MIN, min_bits);
        gyre_state_store(ctx, GYRE_BI_AGG_MAX, max_bits);
        gyre_state_store(ctx, GYRE_BI_AGG_FIRST_SEQ, first_seq);
        gyre_state_store(ctx, GYRE_BI_AGG_LAST_SEQ, seq);
        return GYRE_OK;
    }
    // Full: the next window starts empty (the reference's `Aggregate { window: window + 1,
    // ..zeroed }`).
    gyre_state_store(ctx, GYRE_BI_AGG_WINDOW, window + 1u);
    gyre_state_store(ctx, GYRE_BI_AGG_COUNT, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_SUM, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_MIN, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_MAX, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_FIRST_SEQ, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_LAST_SEQ, 0u);
    gyre_state_store(ctx, GYRE_BI_AGG_RESERVED, 0u);
    var saved: array<u32, 8>;
    for (var i = 0u; i < 8u; i += 1u) {
        saved[i] = (*msg).w[i];
    }
    (*msg).w[GYRE_BI_AGG_WINDOW] = window;
    (*msg).w[GYRE_BI_AGG_COUNT] = count;
    (*msg).w[GYRE_BI_AGG_SUM] = sum_bits;
    (*msg).w[GYRE_BI_AGG_MIN] = min_bits;
    (*msg).w[GYRE_BI_AGG_MAX] = max_bits;
    (*msg).w[GYRE_BI_AGG_FIRST_SEQ] = first_seq;
    (*msg).w[GYRE_BI_AGG_LAST_SEQ] = seq;
    (*msg).w[GYRE_BI_AGG_RESERVED] = 0u;
    let result = gyre_emit(ctx, 0u, msg, GYRE_BUILTIN_AGGREGATE_BYTES);
    for (var i = 0u; i < 8u; i += 1u) {
        (*msg).w[i] = saved[i];
    }
    return result;
}

// histogram (sequential): counts each record's value into one of params[0] bins over
// [lo, hi): x = (value + (-lo)) * scale with scale = bins / (hi - lo) computed by the
// host in f32 (params[4]); bin 0 unless x >= 0 (below lo, or NaN), the last bin when
// x >= bins (at or above hi), else u32(x) (truncation == floor, as x < bins <= 8). The
// state is the Histogram (10 words: total, bins, counts[8]), cumulative and wrapping;
// after every `every` records (total % every == 0) it is emitted to port 0.
fn gyre_builtin_histogram(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let bins = gyre_param(ctx, 0u);
    let lo = gyre_param(ctx, 1u);
    let every = gyre_param(ctx, 3u);
    let scale = gyre_param(ctx, 4u);
    // !(scale > 0 && scale <= f32::MAX) on the bit pattern: a positive, nonzero, finite
    // f32 is exactly a pattern in 1 ..= 0x7f7fffff (a subnormal scale passes, as on the
    // reference, even where the driver would flush it).
    if bins == 0u || bins > GYRE_BUILTIN_MAX_BINS || every == 0u || scale == 0u
        || scale > GYRE_BI_F32_MAX_BITS {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (*ctx).state_words < GYRE_BUILTIN_HISTOGRAM_STATE_WORDS {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let v = bitcast<f32>((*msg).w[GYRE_BI_REC_VALUE]);
    // -lo by flipping the sign bit: exactly Rust's `-lo`, whatever the driver does with
    // subnormals.
    let neg_lo = bitcast<f32>(lo ^ GYRE_BI_F32_SIGN);
    let shifted = v + neg_lo;
    let x = shifted * bitcast<f32>(scale);
    let x_bits = bitcast<u32>(x);
    var idx = 0u; // below lo, or NaN
    if gyre_bi_le(0u, x_bits) {
        let bins_f = f32(bins); // exact: bins <= 8
        if gyre_bi_le(bitcast<u32>(bins_f), x_bits) {
            idx = bins - 1u;
        } else {
            idx = u32(x);
        }
    }
    let slot = GYRE_BI_HIST_COUNTS + idx;
    gyre_state_store(ctx, slot, gyre_state_load(ctx, slot) + 1u);
    let total = gyre_state_load(ctx, GYRE_BI_HIST_TOTAL) + 1u;
    gyre_state_store(ctx, GYRE_BI_HIST_TOTAL, total);
    gyre_state_store(ctx, GYRE_BI_HIST_BINS, bins);
    if total % every != 0u {
        return GYRE_OK;
    }
    var saved: array<u32, 10>;
    for (var i = 0u; i < GYRE_BUILTIN_HISTOGRAM_STATE_WORDS; i += 1u) {
        saved[i] = (*msg).w[i];
        (*msg).w[i] = gyre_state_load(ctx, i);
    }
    let result = gyre_emit(ctx, 0u, msg, GYRE_BUILTIN_HISTOGRAM_BYTES);
    for (var i = 0u; i < GYRE_BUILTIN_HISTOGRAM_STATE_WORDS; i += 1u) {
        (*msg).w[i] = saved[i];
    }
    return result;
}

// scatter: forwards the record unchanged to port key % params[0]. Refuses ports outside
// 1 ..= 8 (the reference) and more ports than the kernel has (the CUDA device function;
// the host binds exactly `ports` ports, so the two agree).
fn gyre_builtin_scatter(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let ports = gyre_param(ctx, 0u);
    if ports == 0u || ports > GYRE_BUILTIN_MAX_SCATTER_PORTS || ports > (*ctx).n_ports {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let key = (*msg).w[GYRE_BI_REC_KEY];
    return gyre_emit(ctx, key % ports, msg, GYRE_BUILTIN_REC_BYTES);
}

// gather: forwards the record unchanged to port 0 (fed by several upstream kernels; the
// order across its inboxes is not defined).
fn gyre_builtin_gather(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < GYRE_BUILTIN_REC_BYTES {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    return gyre_emit(ctx, 0u, msg, GYRE_BUILTIN_REC_BYTES);
}
