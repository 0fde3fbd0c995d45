//! The examples' handlers for the GPU backends: each one in CUDA C and in WGSL, with the
//! exact semantics of the CPU closure it stands for (bit for bit, floats included).
//!
//! Every [`DeviceHandler`] names one function that both of its sources define:
//!
//! - CUDA C: `__device__ int FUNCTION(gyre_ctx *ctx, const void *msg, gyre_u32 bytes)`
//!   (see `runtime/docs/CUDA.md`), for `gyre::KernelSpec::cuda`;
//! - WGSL: `fn FUNCTION(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes:
//!   u32) -> u32` (see `runtime/docs/WGPU.md`), for `gyre::KernelSpec::wgsl`.
//!
//! [`DeviceHandler::on`] gives a spec both.
//!
//! Messages are the examples' `#[repr(C)]` types, read and written in their Rust layout
//! (in WGSL as little-endian `u32` words; a `u64` is two words, low first). Every emit
//! keeps the correlation id of the message in hand (`gyre_emit` does that on both
//! backends), as the CPU's `Emit::emit` does. A message shorter than the handler's input
//! type is refused with `GYRE_BUILTIN_ERR_INPUT` (1002), missing state with
//! `GYRE_BUILTIN_ERR_STATE` (1003) and a parameter that cannot work with
//! `GYRE_BUILTIN_ERR_PARAMS` (1001), the built-ins' codes, so the message goes to the dead
//! letters where the CPU handler could not have been given it at all.
//!
//! Rules the sources keep so that the outputs equal the CPU's bit for bit:
//!
//! - **No contraction.** CUDA compilers fuse `a * b + c` into an FMA by default; the CUDA
//!   sources write float arithmetic with `__fmul_rn` / `__fadd_rn`, which are never fused
//!   (the emulation defines them too). `/` is correctly rounded under NVRTC's defaults
//!   (`-prec-div=true`, no `-use_fast_math`) and in the emulation (g++, IEEE). WGSL
//!   sources write every product and sum as its own statement (lavapipe does not contract;
//!   see `runtime/docs/WGPU.md`). `calibrate` could not differ anyway: `raw * 0.5` is exact
//!   unless it underflows, and then adding 1.0 rounds to 1.0 fused or not.
//! - **WGSL division is not exact** (the WGSL spec allows 2.5 ulp for `/`): the WGSL
//!   handlers that divide do it in integer arithmetic, correctly rounded
//!   ([`PIPELINE_AGGREGATE`]).
//! - **WGSL may assume no NaN or infinity and may flush subnormals**, so WGSL sources test
//!   and compare floats on their bit patterns, never with `f32` comparisons. What bit
//!   patterns cannot fix: a driver that flushes subnormal operands or results of `+`
//!   would change a sum of subnormals (the pipeline's values are far from them).
//! - **Stateful handlers run one message at a time, in order** (`.sequential()` with
//!   `.state_bytes(STATE_BYTES)`, which [`DeviceHandler::on`] sets; wgpu user handlers
//!   always run that way), so sums are accumulated in the CPU's order.
//! - **No `u64` in WGSL**: 64-bit sums and products are done on pairs of words.
//!
//! Each WGSL source prefixes its helpers with its function's name, because every handler of
//! a wgpu group shares one module: two handlers of one group never define the same name.
//! (CUDA sources are compiled in a namespace each.)
//!
//! Two stages are exactly gyre built-ins as well (the tests check both ways against the
//! CPU closures):
//!
//! - `calibrate` is `Builtin::Affine { a: 0.5, b: 1.0 }`: a `Frame` has the layout of a
//!   built-in `Record` (`key, seq, value, aux`), and `Affine` computes `a * value + b`
//!   rounded after the multiply and after the add, `0.5 * raw + 1.0`, which is
//!   `raw * 0.5 + 1.0` bit for bit;
//! - `filter` is `Builtin::Filter { lo: f32::MIN, hi: 10_000.0 }`: it forwards iff
//!   `lo <= value < hi`, which for the most negative finite `lo` is "finite and below
//!   10,000" (`-inf` is below `lo`, `+inf` not below `hi`, NaN fails both).

/// One handler written for the GPU backends: the function both sources define, its CUDA C
/// and its WGSL, and the state it keeps.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHandler {
    /// The function both sources define: the name a kernel gives as its handler.
    pub function: &'static str,
    /// The CUDA C source.
    pub cuda: &'static str,
    /// The WGSL source.
    pub wgsl: &'static str,
    /// Bytes of state the handler keeps across messages (0: stateless). A stateful handler
    /// must run one message at a time, in order: `.sequential().state_bytes(n)`, which
    /// [`DeviceHandler::on`] sets.
    pub state_bytes: u32,
}

impl DeviceHandler {
    /// Words of state (`state_bytes / 4`, rounded up): what a WGSL handler reads with
    /// `gyre_state_load`.
    pub const fn state_words(&self) -> u32 {
        self.state_bytes.div_ceil(4)
    }

    /// `spec` with this handler as its CUDA and WGSL implementations; a handler that keeps
    /// state runs one message at a time, in order, with its state.
    #[must_use]
    pub fn on<In: gyre::Message, Out: gyre::Message>(
        &self,
        spec: gyre::KernelSpec<In, Out>,
    ) -> gyre::KernelSpec<In, Out> {
        let spec = spec
            .cuda(self.function, self.cuda)
            .wgsl(self.function, self.wgsl);
        if self.state_bytes > 0 {
            spec.sequential().state_bytes(self.state_bytes)
        } else {
            spec
        }
    }
}

/// Parameter words from the first few (the rest zero), for `KernelSpec::params`.
pub fn params(first: &[u32]) -> [u32; gyre::builtins::PARAM_WORDS] {
    let mut words = [0; gyre::builtins::PARAM_WORDS];
    words[..first.len()].copy_from_slice(first);
    words
}

// ---- pipeline (examples/pipeline.rs) ----------------------------------------------------

/// Sensors of the pipeline example (`SENSORS` in `examples/pipeline.rs`); the aggregate
/// handler keeps one window per sensor (`sensor % PIPELINE_SENSORS`).
pub const PIPELINE_SENSORS: u32 = 16;
/// Frames per window of the pipeline example (`WINDOW` in `examples/pipeline.rs`).
pub const PIPELINE_WINDOW: u32 = 1000;

/// `calibrate` of `examples/pipeline.rs`: a `Frame` (`sensor, seq, raw: f32, _pad`) with
/// `raw * 0.5 + 1.0` (rounded after the multiply and after the add, as Rust does), to
/// port 0. Stateless.
pub const PIPELINE_CALIBRATE: DeviceHandler = DeviceHandler {
    function: "pipeline_calibrate",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u32 sensor;
    gyre_u32 seq;
    float raw;
    gyre_u32 pad;
} frame;

__device__ int pipeline_calibrate(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(frame)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    frame f = *(const frame *)msg;
    f.raw = __fadd_rn(__fmul_rn(f.raw, 0.5f), 1.0f); /* never fused into an FMA */
    return gyre_emit(ctx, 0u, &f, sizeof f);
}
",
    wgsl: r"
// Frame words: 0 sensor, 1 seq, 2 raw (f32 bits), 3 pad.
fn pipeline_calibrate(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    var out: GyreMsg;
    out.w[0] = (*msg).w[0];
    out.w[1] = (*msg).w[1];
    out.w[3] = (*msg).w[3];
    // Two statements: the product is rounded before the add.
    let half = bitcast<f32>((*msg).w[2]) * 0.5;
    let raw = half + 1.0;
    out.w[2] = bitcast<u32>(raw);
    return gyre_emit(ctx, 0u, &out, 16u);
}
",
};

/// `filter` of `examples/pipeline.rs`: forwards a `Frame` unchanged to port 0 iff `raw`
/// is finite and below 10,000 (NaN and infinities never pass). Stateless.
pub const PIPELINE_FILTER: DeviceHandler = DeviceHandler {
    function: "pipeline_filter",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u32 sensor;
    gyre_u32 seq;
    float raw;
    gyre_u32 pad;
} frame;

__device__ int pipeline_filter(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(frame)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const frame *f = (const frame *)msg;
    union {
        float f;
        gyre_u32 u;
    } raw;
    raw.f = f->raw;
    const bool finite = (raw.u & 0x7f800000u) != 0x7f800000u; /* not NaN, not +-inf */
    if (finite && f->raw < 10000.0f) {
        return gyre_emit(ctx, 0u, f, sizeof(frame));
    }
    return GYRE_OK;
}
",
    wgsl: r"
// Frame words: 0 sensor, 1 seq, 2 raw (f32 bits), 3 pad.
fn pipeline_filter(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let raw = (*msg).w[2];
    // On the bit pattern (WGSL may assume floats are finite): finite is an exponent that
    // is not all ones; a finite raw < 10000.0 (0x461c4000) is a negative one (zeros
    // included) or a positive one whose pattern is below 10000.0's.
    let finite = (raw & 0x7f800000u) != 0x7f800000u;
    let below = (raw & 0x80000000u) != 0u || raw < 0x461c4000u;
    if finite && below {
        return gyre_emit(ctx, 0u, msg, 16u);
    }
    return GYRE_OK;
}
",
};

/// `aggregate` of `examples/pipeline.rs`: per sensor (`sensor % 16`), a window of
/// count, sum and max of `raw` over [`PIPELINE_WINDOW`] frames; when a window fills it
/// emits a `Summary` (`sensor, count, mean = sum / count, max`) to port 0 and starts
/// the sensor's next window empty (sum 0, max `f32::MIN`). The sum is accumulated in
/// arrival order and rounded after each add; the mean is the correctly rounded quotient;
/// the max is replaced only by a larger value (a NaN never replaces it, as with
/// `f32::max`). Stateful: one window of 3 words per sensor, 192 bytes; must run one
/// message at a time, in order.
///
/// (The CPU's `f32::max` leaves the result for `max(-0.0, +0.0)` unspecified; these
/// handlers keep the first. A calibrated frame is never `-0.0`, so the pipeline never
/// meets the case.)
pub const PIPELINE_AGGREGATE: DeviceHandler = DeviceHandler {
    function: "pipeline_aggregate",
    state_bytes: PIPELINE_SENSORS * 12,
    cuda: r"
enum { SENSORS = 16u, WINDOW = 1000u };

typedef struct {
    gyre_u32 sensor;
    gyre_u32 seq;
    float raw;
    gyre_u32 pad;
} frame;

typedef struct {
    gyre_u32 sensor;
    gyre_u32 count;
    float mean;
    float max;
} summary;

/* One sensor's window; zeroed at launch, and count 0 means empty (sum 0, max f32::MIN). */
typedef struct {
    gyre_u32 count;
    float sum;
    float max;
} window;

__device__ int pipeline_aggregate(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(frame)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    if (ctx->state == 0) {
        return GYRE_BUILTIN_ERR_STATE;
    }
    const frame *f = (const frame *)msg;
    window *w = (window *)ctx->state + f->sensor % SENSORS;
    if (w->count == 0u) {
        w->sum = 0.0f;
        w->max = -3.40282347e+38f; /* f32::MIN */
    }
    w->count += 1u;
    w->sum = __fadd_rn(w->sum, f->raw);
    if (f->raw > w->max) { /* f32::max: a NaN never replaces */
        w->max = f->raw;
    }
    if (w->count != WINDOW) {
        return GYRE_OK;
    }
    summary s;
    s.sensor = f->sensor;
    s.count = w->count;
    s.mean = w->sum / (float)w->count; /* correctly rounded: -prec-div=true, the default */
    s.max = w->max;
    const int emitted = gyre_emit(ctx, 0u, &s, sizeof s);
    if (emitted == GYRE_OK) { /* the CPU resets the window after a successful emit */
        w->count = 0u;
    }
    return emitted;
}
",
    wgsl: r"
// Frame words: 0 sensor, 1 seq, 2 raw (f32 bits), 3 pad. Summary words: 0 sensor,
// 1 count, 2 mean, 3 max. State: per sensor s, words 3s (count), 3s + 1 (sum bits),
// 3s + 2 (max bits); count 0 means an empty window (sum 0, max f32::MIN).
const pipeline_aggregate_SENSORS: u32 = 16u;
const pipeline_aggregate_WINDOW: u32 = 1000u;
const pipeline_aggregate_F32_MIN: u32 = 0xff7fffffu;

// The key that orders non-NaN f32 bit patterns like their values (-0 and +0 both 0).
fn pipeline_aggregate_key(b: u32) -> i32 {
    let mag = bitcast<i32>(b & 0x7fffffffu);
    return select(mag, -mag, (b & 0x80000000u) != 0u);
}

// IEEE a < b on bit patterns: false when either is a NaN.
fn pipeline_aggregate_lt(a: u32, b: u32) -> bool {
    let nan = (a & 0x7fffffffu) > 0x7f800000u || (b & 0x7fffffffu) > 0x7f800000u;
    return !nan && pipeline_aggregate_key(a) < pipeline_aggregate_key(b);
}

// The f32 `x / f32(n)`, correctly rounded (round to nearest, ties to even), for `x` (bit
// pattern) and 1 <= n <= 2^24, in integer arithmetic: WGSL's `/` may be 2.5 ulp off.
// x = m * 2^e with m < 2^24; the quotient's bits come from a long division of m by n,
// continued until 26 bits (24, a round bit, one more) plus a sticky remainder. An
// infinite x (a window whose sum overflowed) or a NaN is its own quotient.
fn pipeline_aggregate_div(x: u32, n: u32) -> u32 {
    let sign = x & 0x80000000u;
    let biased = (x >> 23u) & 0xffu;
    var m = x & 0x7fffffu;
    if biased == 0xffu || (biased == 0u && m == 0u) {
        return x; // +-inf / n, NaN / n, +-0 / n
    }
    var e = -149;
    if biased != 0u {
        m = m | 0x800000u;
        e = i32(biased) - 150;
    }
    // Normalise a subnormal x so that m >= 2^23: the quotient then needs <= 27 steps.
    for (var i = 0u; i < 23u; i++) {
        if m >= 0x800000u {
            break;
        }
        m = m << 1u;
        e = e - 1;
    }
    var q = m / n;
    var r = m % n;
    // x / n = (q + r / n) * 2^e; shift quotient bits in until q >= 2^25.
    for (var i = 0u; i < 40u; i++) {
        if q >= 0x2000000u {
            break;
        }
        r = r << 1u;
        q = q << 1u;
        if r >= n {
            r = r - n;
            q = q | 1u;
        }
        e = e - 1;
    }
    // q has 26 bits (q < 2^26 as m < 2^24 <= 2^24 * n); the value is (q + sticky) * 2^e.
    // Keep 24 bits, or fewer where the result is subnormal (exponent below -149).
    var shift = 2u;
    if e + 2 < -149 {
        let s = -149 - e;
        shift = u32(min(s, 31));
    }
    let kept = q >> shift;
    let rest = q & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    var mant = kept;
    // Above half, or half with a nonzero remainder below it, or an exact tie to an odd.
    if rest > half || (rest == half && (r != 0u || (kept & 1u) == 1u)) {
        mant = mant + 1u;
    }
    var exp = e + i32(shift); // the value is mant * 2^exp
    if mant == 0x1000000u {
        mant = 0x800000u;
        exp = exp + 1;
    }
    if mant < 0x800000u {
        return sign | mant; // subnormal (or zero): exp is -149
    }
    return sign | (u32(exp + 150) << 23u) | (mant & 0x7fffffu);
}

fn pipeline_aggregate(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    if (*ctx).state_words < pipeline_aggregate_SENSORS * 3u {
        return GYRE_BUILTIN_ERR_STATE;
    }
    let sensor = (*msg).w[0];
    let raw = (*msg).w[2];
    let at = (sensor % pipeline_aggregate_SENSORS) * 3u;
    var count = gyre_state_load(ctx, at);
    var sum = gyre_state_load(ctx, at + 1u);
    var top = gyre_state_load(ctx, at + 2u);
    if count == 0u {
        sum = 0u;
        top = pipeline_aggregate_F32_MIN;
    }
    count = count + 1u;
    let added = bitcast<f32>(sum) + bitcast<f32>(raw);
    sum = bitcast<u32>(added);
    if pipeline_aggregate_lt(top, raw) {
        top = raw; // f32::max: a NaN never replaces
    }
    gyre_state_store(ctx, at, count);
    gyre_state_store(ctx, at + 1u, sum);
    gyre_state_store(ctx, at + 2u, top);
    if count != pipeline_aggregate_WINDOW {
        return GYRE_OK;
    }
    var out: GyreMsg;
    out.w[0] = sensor;
    out.w[1] = count;
    out.w[2] = pipeline_aggregate_div(sum, count);
    out.w[3] = top;
    let emitted = gyre_emit(ctx, 0u, &out, 16u);
    if emitted == GYRE_OK {
        gyre_state_store(ctx, at, 0u); // the CPU resets the window after a successful emit
    }
    return emitted;
}
",
};

// ---- fan_out (examples/src/fan_out.rs) --------------------------------------------------

/// What [`FAN_OUT_ROUTER`] reads in parameter word 1 for [`crate::fan_out::Routing`].
pub fn fan_out_routing_word(routing: crate::fan_out::Routing) -> u32 {
    match routing {
        crate::fan_out::Routing::RoundRobin => 0,
        crate::fan_out::Routing::ByKey => 1,
    }
}

/// The router of `examples/src/fan_out.rs`: emits an `Item` (`seq, key, value, worker`)
/// unchanged to port `Routing::port(item, workers)`: `seq % workers` (round-robin) or
/// `key_hash(key) % workers` (by key, the MurmurHash3 finaliser of
/// [`crate::fan_out::key_hash`]). Parameters: word 0 the number of workers (the kernel's
/// ports, 1 to 8 on the GPU backends), word 1 the routing ([`fan_out_routing_word`]: 0
/// round-robin, 1 by key). Stateless.
pub const FAN_OUT_ROUTER: DeviceHandler = DeviceHandler {
    function: "fan_out_router",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u32 seq;
    gyre_u32 key;
    gyre_u32 value;
    gyre_u32 worker;
} item;

/* The 32-bit finaliser of MurmurHash3 (fan_out::key_hash). */
__device__ gyre_u32 key_hash(gyre_u32 key) {
    gyre_u32 h = key;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

__device__ int fan_out_router(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 workers = ctx->params[0];
    const gyre_u32 by_key = ctx->params[1];
    if (workers == 0u || by_key > 1u) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (bytes < sizeof(item)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const item *it = (const item *)msg;
    const gyre_u32 port = by_key ? key_hash(it->key) % workers : it->seq % workers;
    return gyre_emit(ctx, port, it, sizeof(item));
}
",
    wgsl: r"
// Item words: 0 seq, 1 key, 2 value, 3 worker.

// The 32-bit finaliser of MurmurHash3 (fan_out::key_hash); u32 arithmetic wraps.
fn fan_out_router_key_hash(key: u32) -> u32 {
    var h = key;
    h = h ^ (h >> 16u);
    h = h * 0x85EBCA6Bu;
    h = h ^ (h >> 13u);
    h = h * 0xC2B2AE35u;
    h = h ^ (h >> 16u);
    return h;
}

fn fan_out_router(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let workers = gyre_param(ctx, 0u);
    let by_key = gyre_param(ctx, 1u);
    if workers == 0u || by_key > 1u {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    var port = (*msg).w[0] % workers;
    if by_key == 1u {
        port = fan_out_router_key_hash((*msg).w[1]) % workers;
    }
    return gyre_emit(ctx, port, msg, 16u);
}
",
};

/// A worker of `examples/src/fan_out.rs`: emits the `Item` with `value` replaced by
/// [`crate::fan_out::work`] of it (`2 * value + 1`, wrapping) and `worker` set to its
/// index, to port 0. Parameters: word 0 the worker's index. Stateless.
pub const FAN_OUT_WORKER: DeviceHandler = DeviceHandler {
    function: "fan_out_worker",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u32 seq;
    gyre_u32 key;
    gyre_u32 value;
    gyre_u32 worker;
} item;

__device__ int fan_out_worker(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(item)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    item it = *(const item *)msg;
    it.value = it.value * 2u + 1u; /* wrapping: unsigned arithmetic */
    it.worker = ctx->params[0];
    return gyre_emit(ctx, 0u, &it, sizeof it);
}
",
    wgsl: r"
// Item words: 0 seq, 1 key, 2 value, 3 worker.
fn fan_out_worker(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    var out: GyreMsg;
    out.w[0] = (*msg).w[0];
    out.w[1] = (*msg).w[1];
    out.w[2] = (*msg).w[2] * 2u + 1u; // u32 arithmetic wraps
    out.w[3] = gyre_param(ctx, 0u);
    return gyre_emit(ctx, 0u, &out, 16u);
}
",
};

// ---- scatter_gather (examples/src/scatter_gather.rs) ------------------------------------

/// The scatter of `examples/src/scatter_gather.rs`: cuts a `Job` (64 `u32`) into 4
/// `Chunk`s (`part, parts = 4, values: [u32; 16]`) and emits chunk `k` to port
/// `(first + k) % workers`, where `first = corr % workers` (the job id travels as the
/// correlation id, and every chunk keeps it). Parameters: word 0 the number of workers
/// (the kernel's ports, 1 to 8 on the GPU backends). Emits 4 messages per job
/// (`max_emits` at least 4). Stateless.
pub const SCATTER_GATHER_SCATTER: DeviceHandler = DeviceHandler {
    function: "scatter_gather_scatter",
    state_bytes: 0,
    cuda: r"
enum { VALUES = 64u, PARTS = 4u, CHUNK = 16u };

typedef struct {
    gyre_u32 values[VALUES];
} job;

typedef struct {
    gyre_u32 part;
    gyre_u32 parts;
    gyre_u32 values[CHUNK];
} chunk;

__device__ int scatter_gather_scatter(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    const gyre_u32 workers = ctx->params[0];
    if (workers == 0u) {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if (bytes < sizeof(job)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const job *j = (const job *)msg;
    const gyre_u64 corr = ((gyre_u64)ctx->corr[1] << 32) | ctx->corr[0];
    const gyre_u32 first = (gyre_u32)(corr % workers);
    for (gyre_u32 k = 0u; k < PARTS; ++k) {
        chunk c;
        c.part = k;
        c.parts = PARTS;
        for (gyre_u32 i = 0u; i < CHUNK; ++i) {
            c.values[i] = j->values[k * CHUNK + i];
        }
        const int emitted = gyre_emit(ctx, (first + k) % workers, &c, sizeof c);
        if (emitted != GYRE_OK) {
            return emitted; /* as the CPU's `?`: the chunks before it stay emitted */
        }
    }
    return GYRE_OK;
}
",
    wgsl: r"
// Job words: 0..64 the values. Chunk words: 0 part, 1 parts, 2..18 the values.
fn scatter_gather_scatter(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let workers = gyre_param(ctx, 0u);
    if workers == 0u || workers > 0xffffu {
        return GYRE_BUILTIN_ERR_PARAMS;
    }
    if bytes < 256u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    // corr % workers for the 64-bit corr = hi * 2^32 + lo, in u32 (workers < 2^16, so no
    // product below overflows).
    let wrap = (0xffffffffu % workers + 1u) % workers; // 2^32 % workers
    let first = ((((*ctx).corr1 % workers) * wrap) % workers + (*ctx).corr0 % workers) % workers;
    var out: GyreMsg;
    for (var k = 0u; k < 4u; k++) {
        out.w[0] = k;
        out.w[1] = 4u;
        for (var i = 0u; i < 16u; i++) {
            out.w[2u + i] = (*msg).w[k * 16u + i];
        }
        let emitted = gyre_emit(ctx, (first + k) % workers, &out, 72u);
        if emitted != GYRE_OK {
            return emitted; // as the CPU's `?`: the chunks before it stay emitted
        }
    }
    return GYRE_OK;
}
",
};

/// A worker of `examples/src/scatter_gather.rs`: emits the `Partial` of a `Chunk`
/// (`sum_squares: u64` of its values, their `max`, `part`, `parts`, and `worker` = its
/// index) to port 0. Parameters: word 0 the worker's index. Stateless.
pub const SCATTER_GATHER_WORKER: DeviceHandler = DeviceHandler {
    function: "scatter_gather_worker",
    state_bytes: 0,
    cuda: r"
enum { CHUNK = 16u };

typedef struct {
    gyre_u32 part;
    gyre_u32 parts;
    gyre_u32 values[CHUNK];
} chunk;

typedef struct {
    gyre_u64 sum_squares;
    gyre_u32 max;
    gyre_u32 part;
    gyre_u32 parts;
    gyre_u32 worker;
} partial;

__device__ int scatter_gather_worker(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(chunk)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const chunk *c = (const chunk *)msg;
    partial p;
    p.sum_squares = 0u;
    p.max = 0u;
    for (gyre_u32 i = 0u; i < CHUNK; ++i) {
        const gyre_u64 v = c->values[i];
        p.sum_squares += v * v;
        p.max = c->values[i] > p.max ? c->values[i] : p.max;
    }
    p.part = c->part;
    p.parts = c->parts;
    p.worker = ctx->params[0];
    return gyre_emit(ctx, 0u, &p, sizeof p);
}
",
    wgsl: r"
// Chunk words: 0 part, 1 parts, 2..18 the values. Partial words: 0-1 sum_squares (low,
// high), 2 max, 3 part, 4 parts, 5 worker.

// a * b as a 64-bit (low, high) pair, from 16-bit halves.
fn scatter_gather_worker_mul(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

fn scatter_gather_worker(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 72u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    var lo = 0u;
    var hi = 0u;
    var top = 0u;
    for (var i = 0u; i < 16u; i++) {
        let v = (*msg).w[2u + i];
        let sq = scatter_gather_worker_mul(v, v);
        let sum = lo + sq.x;
        hi = hi + sq.y + select(0u, 1u, sum < lo); // the carry of the low words
        lo = sum;
        top = max(top, v);
    }
    var out: GyreMsg;
    out.w[0] = lo;
    out.w[1] = hi;
    out.w[2] = top;
    out.w[3] = (*msg).w[0];
    out.w[4] = (*msg).w[1];
    out.w[5] = gyre_param(ctx, 0u);
    return gyre_emit(ctx, 0u, &out, 24u);
}
",
};

/// Jobs [`SCATTER_GATHER_GATHER`] can hold partially combined at once (its table has one
/// slot more, always free). The CPU's table grows without bound; a partial of a new job
/// arriving while this many are pending is refused with [`SCATTER_GATHER_TABLE_FULL`].
pub const SCATTER_GATHER_PENDING: u32 = 4095;

/// The code [`SCATTER_GATHER_GATHER`] returns (sending the partial to the dead letters)
/// when [`SCATTER_GATHER_PENDING`] jobs are already pending.
pub const SCATTER_GATHER_TABLE_FULL: u32 = 2001;

/// The gather of `examples/src/scatter_gather.rs`: combines the `Partial`s of a job (its
/// id is the correlation id) in a table: parts counted, `sum_squares` added, `max` kept,
/// bit `worker` set in `workers`; once `parts` partials arrived it removes the job and
/// emits its `JobResult` (`sum_squares, max, parts, workers, in_flight` = jobs still
/// pending after the removal), keeping the job's correlation id. Stateful: an
/// open-addressing table of 4,096 slots (linear probing, deletion by backward shift), at
/// most [`SCATTER_GATHER_PENDING`] jobs pending (beyond:
/// [`SCATTER_GATHER_TABLE_FULL`]); must run one message at a time, in order.
/// (`1 << worker` takes the worker modulo 32, as Rust's release build does; the example
/// has at most 32 workers, and at most 8 on the GPU backends.)
pub const SCATTER_GATHER_GATHER: DeviceHandler = DeviceHandler {
    function: "scatter_gather_gather",
    state_bytes: 8 + 4096 * 32,
    cuda: r"
enum { SLOTS = 4096u, PENDING = 4095u, TABLE_FULL = 2001 };

typedef struct {
    gyre_u64 sum_squares;
    gyre_u32 max;
    gyre_u32 part;
    gyre_u32 parts;
    gyre_u32 worker;
} partial;

typedef struct {
    gyre_u64 sum_squares;
    gyre_u32 max;
    gyre_u32 parts;
    gyre_u32 workers;
    gyre_u32 in_flight;
} job_result;

/* A table slot: free while parts == 0 (the state is zeroed at launch). */
typedef struct {
    gyre_u32 parts;
    gyre_u32 job_lo;
    gyre_u32 job_hi;
    gyre_u32 max;
    gyre_u64 sum_squares;
    gyre_u32 workers;
    gyre_u32 reserved;
} slot;

typedef struct {
    gyre_u32 pending;
    gyre_u32 reserved;
    slot slots[SLOTS];
} table;

__device__ gyre_u32 fmix(gyre_u32 h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

/* The slot a job's probe starts at. */
__device__ gyre_u32 home(gyre_u32 lo, gyre_u32 hi) {
    return fmix(lo ^ fmix(hi)) & (SLOTS - 1u);
}

/* Frees slot `hole`, moving later entries of its probe run back so no lookup breaks. */
__device__ void remove_at(table *t, gyre_u32 hole) {
    gyre_u32 j = hole;
    for (gyre_u32 n = 0u; n < SLOTS; ++n) {
        j = (j + 1u) & (SLOTS - 1u);
        if (t->slots[j].parts == 0u) {
            break;
        }
        const gyre_u32 h = home(t->slots[j].job_lo, t->slots[j].job_hi);
        /* The entry at j stays when its home is cyclically in (hole, j]. */
        const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
        if (!stays) {
            t->slots[hole] = t->slots[j];
            hole = j;
        }
    }
    t->slots[hole].parts = 0u;
}

__device__ int scatter_gather_gather(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (ctx->state == 0) {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if (bytes < sizeof(partial)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const partial *p = (const partial *)msg;
    table *t = (table *)ctx->state;
    const gyre_u32 lo = ctx->corr[0];
    const gyre_u32 hi = ctx->corr[1];
    gyre_u32 i = home(lo, hi);
    while (t->slots[i].parts != 0u && (t->slots[i].job_lo != lo || t->slots[i].job_hi != hi)) {
        i = (i + 1u) & (SLOTS - 1u); /* ends: at least one slot is always free */
    }
    slot *acc = &t->slots[i];
    if (acc->parts == 0u) { /* a new job */
        if (t->pending >= PENDING) {
            return TABLE_FULL;
        }
        acc->job_lo = lo;
        acc->job_hi = hi;
        acc->max = 0u;
        acc->sum_squares = 0u;
        acc->workers = 0u;
        t->pending += 1u;
    }
    acc->parts += 1u;
    acc->sum_squares += p->sum_squares;
    acc->max = p->max > acc->max ? p->max : acc->max;
    acc->workers |= 1u << (p->worker & 31u);
    if (acc->parts < p->parts) {
        return GYRE_OK;
    }
    job_result r;
    r.sum_squares = acc->sum_squares;
    r.max = acc->max;
    r.parts = acc->parts;
    r.workers = acc->workers;
    remove_at(t, i);
    t->pending -= 1u;
    r.in_flight = t->pending;
    return gyre_emit(ctx, 0u, &r, sizeof r);
}
",
    wgsl: r"
// Partial words: 0-1 sum_squares, 2 max, 3 part, 4 parts, 5 worker. JobResult words:
// 0-1 sum_squares, 2 max, 3 parts, 4 workers, 5 in_flight.
// State: word 0 the jobs pending, word 1 reserved, then 4096 slots of 8 words: parts
// (0: free), job low, job high, max, sum low, sum high, workers, reserved.
const scatter_gather_gather_SLOTS: u32 = 4096u;
const scatter_gather_gather_PENDING: u32 = 4095u;
const scatter_gather_gather_TABLE_FULL: u32 = 2001u;

fn scatter_gather_gather_fmix(key: u32) -> u32 {
    var h = key;
    h = h ^ (h >> 16u);
    h = h * 0x85EBCA6Bu;
    h = h ^ (h >> 13u);
    h = h * 0xC2B2AE35u;
    h = h ^ (h >> 16u);
    return h;
}

// The slot a job's probe starts at.
fn scatter_gather_gather_home(lo: u32, hi: u32) -> u32 {
    return scatter_gather_gather_fmix(lo ^ scatter_gather_gather_fmix(hi)) & (scatter_gather_gather_SLOTS - 1u);
}

// The first state word of slot i.
fn scatter_gather_gather_at(i: u32) -> u32 {
    return 2u + i * 8u;
}

// Frees slot `hole`, moving later entries of its probe run back so no lookup breaks.
fn scatter_gather_gather_remove(ctx: ptr<function, GyreCtx>, first: u32) {
    var hole = first;
    var j = first;
    for (var n = 0u; n < scatter_gather_gather_SLOTS; n++) {
        j = (j + 1u) & (scatter_gather_gather_SLOTS - 1u);
        let e = scatter_gather_gather_at(j);
        if gyre_state_load(ctx, e) == 0u {
            break;
        }
        let h = scatter_gather_gather_home(gyre_state_load(ctx, e + 1u), gyre_state_load(ctx, e + 2u));
        // The entry at j stays when its home is cyclically in (hole, j].
        var stays = hole < h || h <= j;
        if hole <= j {
            stays = hole < h && h <= j;
        }
        if !stays {
            let to = scatter_gather_gather_at(hole);
            for (var w = 0u; w < 8u; w++) {
                gyre_state_store(ctx, to + w, gyre_state_load(ctx, e + w));
            }
            hole = j;
        }
    }
    gyre_state_store(ctx, scatter_gather_gather_at(hole), 0u);
}

fn scatter_gather_gather(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if (*ctx).state_words < 2u + scatter_gather_gather_SLOTS * 8u {
        return GYRE_BUILTIN_ERR_STATE;
    }
    if bytes < 24u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let lo = (*ctx).corr0;
    let hi = (*ctx).corr1;
    var i = scatter_gather_gather_home(lo, hi);
    // Ends: at least one slot is always free.
    for (var n = 0u; n < scatter_gather_gather_SLOTS; n++) {
        let e = scatter_gather_gather_at(i);
        if gyre_state_load(ctx, e) == 0u {
            break;
        }
        if gyre_state_load(ctx, e + 1u) == lo && gyre_state_load(ctx, e + 2u) == hi {
            break;
        }
        i = (i + 1u) & (scatter_gather_gather_SLOTS - 1u);
    }
    let e = scatter_gather_gather_at(i);
    var pending = gyre_state_load(ctx, 0u);
    var parts = gyre_state_load(ctx, e);
    var top = gyre_state_load(ctx, e + 3u);
    var sum_lo = gyre_state_load(ctx, e + 4u);
    var sum_hi = gyre_state_load(ctx, e + 5u);
    var workers = gyre_state_load(ctx, e + 6u);
    if parts == 0u { // a new job
        if pending >= scatter_gather_gather_PENDING {
            return scatter_gather_gather_TABLE_FULL;
        }
        gyre_state_store(ctx, e + 1u, lo);
        gyre_state_store(ctx, e + 2u, hi);
        top = 0u;
        sum_lo = 0u;
        sum_hi = 0u;
        workers = 0u;
        pending = pending + 1u;
    }
    parts = parts + 1u;
    let add = sum_lo + (*msg).w[0];
    sum_hi = sum_hi + (*msg).w[1] + select(0u, 1u, add < sum_lo); // the carry
    sum_lo = add;
    top = max(top, (*msg).w[2]);
    workers = workers | (1u << ((*msg).w[5] & 31u));
    if parts < (*msg).w[4] {
        gyre_state_store(ctx, 0u, pending);
        gyre_state_store(ctx, e, parts);
        gyre_state_store(ctx, e + 3u, top);
        gyre_state_store(ctx, e + 4u, sum_lo);
        gyre_state_store(ctx, e + 5u, sum_hi);
        gyre_state_store(ctx, e + 6u, workers);
        return GYRE_OK;
    }
    scatter_gather_gather_remove(ctx, i);
    pending = pending - 1u;
    gyre_state_store(ctx, 0u, pending);
    var out: GyreMsg;
    out.w[0] = sum_lo;
    out.w[1] = sum_hi;
    out.w[2] = top;
    out.w[3] = parts;
    out.w[4] = workers;
    out.w[5] = pending;
    return gyre_emit(ctx, 0u, &out, 24u);
}
",
};

// ---- request_reply (examples/src/request_reply.rs) --------------------------------------

/// The stage `add` of `examples/src/request_reply.rs`: a `Request` (`id: u64, a, b`) to a
/// `Summed` (`id, a, b, sum: u64 = a + b`, no overflow), to port 0, with the request's
/// correlation id (so the reply finds its requester). Stateless.
pub const REQUEST_REPLY_ADD: DeviceHandler = DeviceHandler {
    function: "request_reply_add",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u64 id;
    gyre_u32 a;
    gyre_u32 b;
} request;

typedef struct {
    gyre_u64 id;
    gyre_u32 a;
    gyre_u32 b;
    gyre_u64 sum;
} summed;

__device__ int request_reply_add(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(request)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const request *q = (const request *)msg;
    summed s;
    s.id = q->id;
    s.a = q->a;
    s.b = q->b;
    s.sum = (gyre_u64)q->a + (gyre_u64)q->b;
    return gyre_emit(ctx, 0u, &s, sizeof s); /* keeps the correlation id */
}
",
    wgsl: r"
// Request words: 0-1 id, 2 a, 3 b. Summed words: 0-1 id, 2 a, 3 b, 4-5 sum.
fn request_reply_add(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 16u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let a = (*msg).w[2];
    let b = (*msg).w[3];
    let lo = a + b;
    var out: GyreMsg;
    out.w[0] = (*msg).w[0];
    out.w[1] = (*msg).w[1];
    out.w[2] = a;
    out.w[3] = b;
    out.w[4] = lo;
    out.w[5] = select(0u, 1u, lo < a); // the carry
    return gyre_emit(ctx, 0u, &out, 24u); // keeps the correlation id
}
",
};

/// The stage `multiply` of `examples/src/request_reply.rs`: a `Summed` to a `Reply`
/// (`id, sum, product: u64 = a * b`), to port 0, with the request's correlation id.
/// Stateless.
pub const REQUEST_REPLY_MULTIPLY: DeviceHandler = DeviceHandler {
    function: "request_reply_multiply",
    state_bytes: 0,
    cuda: r"
typedef struct {
    gyre_u64 id;
    gyre_u32 a;
    gyre_u32 b;
    gyre_u64 sum;
} summed;

typedef struct {
    gyre_u64 id;
    gyre_u64 sum;
    gyre_u64 product;
} reply;

__device__ int request_reply_multiply(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {
    if (bytes < sizeof(summed)) {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    const summed *s = (const summed *)msg;
    reply r;
    r.id = s->id;
    r.sum = s->sum;
    r.product = (gyre_u64)s->a * (gyre_u64)s->b;
    return gyre_emit(ctx, 0u, &r, sizeof r); /* keeps the correlation id */
}
",
    wgsl: r"
// Summed words: 0-1 id, 2 a, 3 b, 4-5 sum. Reply words: 0-1 id, 2-3 sum, 4-5 product.

// a * b as a 64-bit (low, high) pair, from 16-bit halves.
fn request_reply_multiply_mul(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

fn request_reply_multiply(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if bytes < 24u {
        return GYRE_BUILTIN_ERR_INPUT;
    }
    let product = request_reply_multiply_mul((*msg).w[2], (*msg).w[3]);
    var out: GyreMsg;
    out.w[0] = (*msg).w[0];
    out.w[1] = (*msg).w[1];
    out.w[2] = (*msg).w[4];
    out.w[3] = (*msg).w[5];
    out.w[4] = product.x;
    out.w[5] = product.y;
    return gyre_emit(ctx, 0u, &out, 24u); // keeps the correlation id
}
",
};
