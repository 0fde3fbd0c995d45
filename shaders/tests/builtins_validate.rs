//! `builtins.wgsl` parses and validates with naga, defines exactly the handlers the CUDA
//! side defines (same names), and its constants agree with `gyre_runtime::builtins`.
//!
//! The module validated here is what a group module looks like around the built-ins: the
//! ABI constants, a stub of the handler interface that `tick.wgsl` provides (same
//! declarations, trivial bodies over `var<private>` arrays), `builtins.wgsl`, and an entry
//! point that calls every handler once.

use std::collections::BTreeSet;

use gyre_runtime::builtins::{self, Builtin};
use gyre_shaders::{BUILTINS_WGSL, GYRE_ABI_WGSL};

/// The handler interface of `tick.wgsl`, with trivial bodies.
const STUB_PRELUDE: &str = r"
const GYRE_MSG_WORDS: u32 = 16u;

struct GyreMsg {
    w: array<u32, GYRE_MSG_WORDS>,
}

struct GyreCtx {
    kernel: u32,
    desc: u32,
    state: u32,
    state_words: u32,
    kind: u32,
    sender: u32,
    corr0: u32,
    corr1: u32,
    emits: u32,
    n_ports: u32,
}

var<private> stub_params: array<u32, 16>;
var<private> stub_state: array<u32, 64>;
var<private> stub_out: array<u32, GYRE_MSG_WORDS>;

fn gyre_param(ctx: ptr<function, GyreCtx>, i: u32) -> u32 {
    return stub_params[min(i, 15u)];
}

fn gyre_state_load(ctx: ptr<function, GyreCtx>, i: u32) -> u32 {
    if i >= (*ctx).state_words {
        return 0u;
    }
    return stub_state[min((*ctx).state + i, 63u)];
}

fn gyre_state_store(ctx: ptr<function, GyreCtx>, i: u32, v: u32) {
    if i < (*ctx).state_words {
        stub_state[min((*ctx).state + i, 63u)] = v;
    }
}

fn gyre_emit(ctx: ptr<function, GyreCtx>, port: u32, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    if port >= (*ctx).n_ports {
        return 0xFFFFFFFFu;
    }
    if bytes > GYRE_MSG_WORDS * 4u {
        return 0xFFFFFFFEu;
    }
    for (var i = 0u; i < (bytes + 3u) / 4u; i += 1u) {
        stub_out[i] = (*msg).w[i];
    }
    (*ctx).emits += 1u;
    return GYRE_OK;
}
";

/// Calls every built-in once.
const STUB_ENTRY: &str = r"
@group(0) @binding(0) var<storage, read_write> stub_results: array<u32, 8>;

@compute @workgroup_size(1)
fn main() {
    var ctx = GyreCtx(0u, 0u, 0u, 10u, 0u, 0u, 0u, 0u, 0u, 8u);
    var msg: GyreMsg;
    msg.w[2] = 0x3f800000u;
    stub_results[0] = gyre_builtin_echo(&ctx, &msg, 64u);
    stub_results[1] = gyre_builtin_affine(&ctx, &msg, 64u);
    stub_results[2] = gyre_builtin_filter(&ctx, &msg, 64u);
    stub_results[3] = gyre_builtin_window(&ctx, &msg, 64u);
    stub_results[4] = gyre_builtin_histogram(&ctx, &msg, 64u);
    stub_results[5] = gyre_builtin_scatter(&ctx, &msg, 64u);
    stub_results[6] = gyre_builtin_gather(&ctx, &msg, 64u);
    stub_results[7] = stub_out[0] + ctx.emits;
}
";

/// One of each built-in.
fn all_builtins() -> [Builtin; 7] {
    [
        Builtin::Echo { bytes: 24 },
        Builtin::Affine { a: 1.0, b: 0.0 },
        Builtin::Filter { lo: 0.0, hi: 1.0 },
        Builtin::Window { size: 4 },
        Builtin::Histogram {
            bins: 8,
            lo: 0.0,
            hi: 1.0,
            every: 16,
        },
        Builtin::Scatter { ports: 4 },
        Builtin::Gather,
    ]
}

fn test_source() -> String {
    format!("{GYRE_ABI_WGSL}\n{STUB_PRELUDE}\n{BUILTINS_WGSL}\n{STUB_ENTRY}")
}

/// Parses `source`, panicking with naga's message (line numbers included) if it fails.
fn parse(source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("WGSL parse error:\n{}", e.emit_to_string(source)))
}

#[test]
fn builtins_parse_and_validate() {
    let source = test_source();
    let module = parse(&source);
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    );
    if let Err(e) = validator.validate(&module) {
        panic!("WGSL validation error:\n{}", e.emit_to_string(&source));
    }

    // Every handler has the handler signature: (ptr<function, GyreCtx>,
    // ptr<function, GyreMsg>, u32) -> u32.
    for b in all_builtins() {
        let name = b.cuda_function();
        let (_, f) = module
            .functions
            .iter()
            .find(|(_, f)| f.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not in builtins.wgsl"));
        assert_eq!(f.arguments.len(), 3, "{name}: arguments");
        let ty = |h: naga::Handle<naga::Type>| &module.types[h].inner;
        for (arg, pointee) in f.arguments[..2].iter().zip(["GyreCtx", "GyreMsg"]) {
            match *ty(arg.ty) {
                naga::TypeInner::Pointer {
                    base,
                    space: naga::AddressSpace::Function,
                } => assert_eq!(module.types[base].name.as_deref(), Some(pointee), "{name}"),
                ref other => panic!("{name}: argument {:?} is {other:?}", arg.name),
            }
        }
        let u32_ty = naga::TypeInner::Scalar(naga::Scalar::U32);
        assert_eq!(*ty(f.arguments[2].ty), u32_ty, "{name}: bytes");
        let result = f.result.as_ref().expect("a handler returns its status");
        assert_eq!(*ty(result.ty), u32_ty, "{name}: result");
    }
}

/// The names of the functions `builtins.wgsl` defines whose name starts with `prefix`,
/// read from the source text.
fn defined_functions(prefix: &str) -> BTreeSet<String> {
    let needle = format!("fn {prefix}");
    BUILTINS_WGSL
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("fn "))
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_owned())
        .filter(|name| format!("fn {name}").starts_with(&needle))
        .collect()
}

#[test]
fn handler_names_match_the_cuda_functions() {
    let cuda: BTreeSet<String> = all_builtins()
        .iter()
        .map(|b| b.cuda_function().to_owned())
        .collect();
    assert_eq!(cuda.len(), 7);
    assert_eq!(defined_functions("gyre_builtin_"), cuda);
}

/// The value of the `u32` constant `name` of `module`.
fn const_u32(module: &naga::Module, name: &str) -> u32 {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no constant {name}"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref other => panic!("{name} = {other:?}, not a u32 literal"),
    }
}

#[test]
fn constants_agree_with_the_reference() {
    let module = parse(&test_source());
    let c = |name| const_u32(&module, name);
    assert_eq!(c("GYRE_BUILTIN_ERR_PARAMS"), builtins::ERR_PARAMS);
    assert_eq!(c("GYRE_BUILTIN_ERR_INPUT"), builtins::ERR_INPUT);
    assert_eq!(c("GYRE_BUILTIN_ERR_STATE"), builtins::ERR_STATE);
    assert_eq!(c("GYRE_BUILTIN_MAX_BINS"), builtins::MAX_BINS);
    assert_eq!(
        c("GYRE_BUILTIN_MAX_SCATTER_PORTS"),
        builtins::MAX_SCATTER_PORTS
    );
    let [_, affine, _, window, histogram, ..] = all_builtins();
    assert_eq!(c("GYRE_BUILTIN_REC_BYTES"), affine.output_bytes());
    assert_eq!(c("GYRE_BUILTIN_AGGREGATE_BYTES"), window.output_bytes());
    assert_eq!(c("GYRE_BUILTIN_HISTOGRAM_BYTES"), histogram.output_bytes());
    assert_eq!(
        c("GYRE_BUILTIN_WINDOW_STATE_WORDS") * 4,
        window.state_bytes()
    );
    assert_eq!(
        c("GYRE_BUILTIN_HISTOGRAM_STATE_WORDS") * 4,
        histogram.state_bytes()
    );
    assert_eq!(c("GYRE_BI_F32_MAX_BITS"), f32::MAX.to_bits());
}
