//! The generated ABI mirrors agree with `gyre_runtime::abi`.
//!
//! - the checked-in files are exactly what the generator produces;
//! - the generator's tables cover every struct field and every constant of the Rust ABI;
//! - the C header compiles as C99, C11, C++11, C++17 and in an NVRTC-like mode, its
//!   constants have the Rust values, and its `static_assert`s reject a wrong layout;
//! - naga parses and validates the WGSL module, and its struct offsets, spans and
//!   constants equal the Rust ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};

use gyre_runtime::abi::{
    self, fault, status, Command, ControlBlock, DeadLetterPrefix, DeadReason, PortKind, RingHeader,
    SlotHeader, State,
};
use xtask::abigen::{self, Shape};
use xtask::workspace_root;

// ---------------------------------------------------------------------------------------
// The oracle: every generated constant, written out against the Rust items directly.
// ---------------------------------------------------------------------------------------

/// Every constant the generated files must define, with its value taken straight from
/// the Rust ABI (not through the generator's tables).
fn rust_constants() -> Vec<(&'static str, u32)> {
    vec![
        ("GYRE_ABI_VERSION", abi::ABI_VERSION),
        ("GYRE_RING_MAGIC", abi::RING_MAGIC),
        ("GYRE_CONTROL_MAGIC", abi::CONTROL_MAGIC),
        ("GYRE_LINE_BYTES", abi::LINE_BYTES),
        ("GYRE_RING_HEADER_BYTES", abi::RING_HEADER_BYTES),
        ("GYRE_CONTROL_BLOCK_BYTES", abi::CONTROL_BLOCK_BYTES),
        (
            "GYRE_DEAD_LETTER_PREFIX_BYTES",
            abi::DEAD_LETTER_PREFIX_BYTES,
        ),
        ("GYRE_SLOT_HEADER_BYTES", abi::SLOT_HEADER_BYTES),
        ("GYRE_MIN_SLOT_BYTES", abi::MIN_SLOT_BYTES),
        ("GYRE_DEFAULT_SLOT_BYTES", abi::DEFAULT_SLOT_BYTES),
        ("GYRE_MAX_SLOT_BYTES", abi::MAX_SLOT_BYTES),
        ("GYRE_MAX_CAPACITY", abi::MAX_CAPACITY),
        ("GYRE_PAYLOAD_ALIGN", abi::PAYLOAD_ALIGN),
        ("GYRE_TAG_KIND_MASK", abi::TAG_KIND_MASK),
        ("GYRE_TAG_SENDER_SHIFT", abi::TAG_SENDER_SHIFT),
        ("GYRE_KIND_MESSAGE", abi::KIND_MESSAGE),
        ("GYRE_KIND_TIMED", abi::KIND_TIMED),
        ("GYRE_KIND_CANCELLED", abi::KIND_CANCELLED),
        ("GYRE_HOST_SENDER_ID", abi::HOST_SENDER_ID),
        ("GYRE_CMD_NONE", Command::None as u32),
        ("GYRE_CMD_ACTIVATE", Command::Activate as u32),
        ("GYRE_CMD_PAUSE", Command::Pause as u32),
        ("GYRE_CMD_DRAIN", Command::Drain as u32),
        ("GYRE_CMD_TERMINATE", Command::Terminate as u32),
        ("GYRE_STATE_LAUNCHED", State::Launched as u32),
        ("GYRE_STATE_ACTIVE", State::Active as u32),
        ("GYRE_STATE_PAUSED", State::Paused as u32),
        ("GYRE_STATE_DRAINING", State::Draining as u32),
        ("GYRE_STATE_TERMINATED", State::Terminated as u32),
        ("GYRE_STATE_FAULTED", State::Faulted as u32),
        ("GYRE_FAULT_NONE", fault::NONE),
        ("GYRE_FAULT_HANDLER_PANIC", fault::HANDLER_PANIC),
        ("GYRE_FAULT_DEVICE_ERROR", fault::DEVICE_ERROR),
        ("GYRE_FAULT_WATCHDOG", fault::WATCHDOG),
        ("GYRE_FAULT_BAD_COMMAND", fault::BAD_COMMAND),
        ("GYRE_PORT_HOST", PortKind::Host as u32),
        ("GYRE_PORT_KERNEL", PortKind::Kernel as u32),
        ("GYRE_PORT_DEAD", PortKind::Dead as u32),
        ("GYRE_DEAD_HANDLER_ERROR", DeadReason::HandlerError as u32),
        ("GYRE_DEAD_PORT", DeadReason::Port as u32),
        ("GYRE_DEAD_STOPPED", DeadReason::Stopped as u32),
        ("GYRE_OK", status::OK.cast_unsigned()),
        ("GYRE_ERR_NO_PORT", status::ERR_NO_PORT.cast_unsigned()),
        ("GYRE_ERR_TOO_LARGE", status::ERR_TOO_LARGE.cast_unsigned()),
        ("GYRE_ERR_TOO_MANY", status::ERR_TOO_MANY.cast_unsigned()),
        (
            "GYRE_ERR_NO_HANDLER",
            status::ERR_NO_HANDLER.cast_unsigned(),
        ),
        ("GYRE_FAULT_KERNEL", status::FAULT_KERNEL.cast_unsigned()),
        (
            "GYRE_BUILTIN_ERR_PARAMS",
            status::BUILTIN_ERR_PARAMS.cast_unsigned(),
        ),
        (
            "GYRE_BUILTIN_ERR_INPUT",
            status::BUILTIN_ERR_INPUT.cast_unsigned(),
        ),
        (
            "GYRE_BUILTIN_ERR_STATE",
            status::BUILTIN_ERR_STATE.cast_unsigned(),
        ),
    ]
}

/// The generator's constants as name → value.
fn generated_constants() -> BTreeMap<String, u32> {
    abigen::constants()
        .into_iter()
        .flat_map(|group| group.constants)
        .map(|constant| (constant.full_name(), constant.value))
        .collect()
}

fn read_checked_in(relative: &str) -> String {
    let path = workspace_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------

#[test]
fn checked_in_files_match_the_generator() {
    let first = abigen::outputs();
    assert_eq!(first, abigen::outputs(), "generation is not deterministic");
    for output in first {
        let on_disk = read_checked_in(output.path);
        assert!(
            on_disk == output.contents,
            "{} is stale: it differs from what runtime/src/abi.rs generates; \
             run `cargo xtask abi` and commit the result",
            output.path
        );
    }
}

#[test]
fn field_tables_tile_each_struct_in_memory_order() {
    let structs = abigen::structs();
    let names: Vec<&str> = structs.iter().map(|layout| layout.name).collect();
    assert_eq!(
        names,
        [
            "RingHeader",
            "SlotHeader",
            "ControlBlock",
            "DeadLetterPrefix"
        ]
    );
    let sizes: Vec<usize> = structs.iter().map(|layout| layout.size).collect();
    assert_eq!(
        sizes,
        [
            size_of::<RingHeader>(),
            size_of::<SlotHeader>(),
            size_of::<ControlBlock>(),
            size_of::<DeadLetterPrefix>(),
        ]
    );
    for layout in &structs {
        layout.check().unwrap();
        for field in &layout.fields {
            let words = match field.shape {
                Shape::Word => 1,
                Shape::Words(len) => len,
            };
            assert_eq!(field.size, 4 * words, "{}.{}", layout.name, field.name);
        }
    }
}

#[test]
fn layout_check_reports_gaps_and_disorder() {
    let mut layout = abigen::structs().remove(1);
    layout.fields.swap(0, 1);
    let error = layout.check().unwrap_err();
    assert!(error.contains("SlotHeader.tag"), "{error}");

    let mut layout = abigen::structs().remove(1);
    layout.fields.pop();
    let error = layout.check().unwrap_err();
    assert!(error.contains("end at 8"), "{error}");
}

/// Every `pub const NAME: u32` in `runtime/src/abi.rs` (those in `mod fault` as
/// `FAULT_NAME`), and every decodable `Command` and `State`, is generated; and the
/// generator's values are the oracle's.
#[test]
fn every_rust_constant_is_generated_with_its_value() {
    let generated = generated_constants();
    let oracle: BTreeMap<String, u32> = rust_constants()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    assert_eq!(generated, oracle);

    let source = read_checked_in("runtime/src/abi.rs");
    let mut module = "";
    let mut seen = 0;
    for line in source.lines() {
        let line = line.trim_end();
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|rest| rest.strip_suffix(" {"))
        {
            module = name;
        } else if line == "}" {
            module = "";
        }
        let Some(rest) = line.trim_start().strip_prefix("pub const ") else {
            continue;
        };
        // `pub const fn` and constants of other types are not ABI words; the `status`
        // codes are `i32`s.
        let word_type = if module == "status" {
            ": i32 ="
        } else {
            ": u32 ="
        };
        let Some((name, _)) = rest.split_once(word_type) else {
            continue;
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let full = if module == "fault" {
            format!("GYRE_FAULT_{name}")
        } else {
            format!("GYRE_{name}")
        };
        assert!(
            generated.contains_key(&full),
            "runtime/src/abi.rs declares {name} but abigen does not generate {full}"
        );
        seen += 1;
    }
    assert!(
        seen >= 20,
        "found only {seen} constants in runtime/src/abi.rs"
    );

    // Every word each enum decodes is generated, under the enum's prefix (sizes such as
    // GYRE_DEAD_LETTER_PREFIX_BYTES share a prefix but are no enum word).
    let decoded =
        |decode: fn(u32) -> bool| (0..=u32::from(u16::MAX)).filter(|&w| decode(w)).count();
    let enums: [(&str, usize); 4] = [
        ("GYRE_CMD_", decoded(|w| Command::from_word(w).is_some())),
        ("GYRE_STATE_", decoded(|w| State::from_word(w).is_some())),
        ("GYRE_PORT_", decoded(|w| PortKind::from_word(w).is_some())),
        (
            "GYRE_DEAD_",
            decoded(|w| DeadReason::from_word(w).is_some()),
        ),
    ];
    for (prefix, count) in enums {
        let generated_count = generated
            .keys()
            .filter(|name| name.starts_with(prefix) && !name.ends_with("_BYTES"))
            .count();
        assert_eq!(generated_count, count, "constants named {prefix}*");
    }
}

// ---------------------------------------------------------------------------------------
// C header
// ---------------------------------------------------------------------------------------

/// One way of compiling the header.
struct Dialect {
    label: &'static str,
    cxx: bool,
    flags: &'static [&'static str],
}

const DIALECTS: &[Dialect] = &[
    Dialect {
        label: "c99",
        cxx: false,
        flags: &["-std=c99"],
    },
    Dialect {
        label: "c11",
        cxx: false,
        flags: &["-std=c11"],
    },
    Dialect {
        label: "c++11",
        cxx: true,
        flags: &["-std=c++11"],
    },
    Dialect {
        label: "c++17",
        cxx: true,
        flags: &["-std=c++17"],
    },
    // What NVRTC sees: C++ with __CUDACC_RTC__ defined and no standard headers at all.
    Dialect {
        label: "nvrtc-like",
        cxx: true,
        flags: &["-std=c++17", "-D__CUDACC_RTC__", "-nostdinc"],
    },
];

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "gyre-xtask-abi-{}-{}",
            std::process::id(),
            label.replace('+', "x")
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A translation unit that includes the header twice (the include guard must hold),
/// declares one of each struct and checks every constant against the Rust value.
fn translation_unit() -> String {
    let mut unit = String::from(
        "#include \"gyre_abi.h\"\n#include \"gyre_abi.h\"\n\n\
         GyreRingHeader gyre_check_ring;\nGyreSlotHeader gyre_check_slot;\n\
         GyreControlBlock gyre_check_control;\nGyreDeadLetterPrefix gyre_check_dead;\n\n",
    );
    // Handler results are C `int`s: negative codes compare as negative numbers.
    for (code, name, _) in status::ALL {
        let _ = writeln!(
            unit,
            "GYRE_STATIC_ASSERT({name} == ({code}), \"{name} == {code} as int\");"
        );
    }
    for (name, value) in rust_constants() {
        let _ = writeln!(
            unit,
            "GYRE_STATIC_ASSERT((gyre_u32)({name}) == {value}u, \"{name} == {value}\");"
        );
    }
    unit
}

/// Compiles `header` (as `gyre_abi.h`) with [`translation_unit`] in `dialect`.
fn compile(header: &str, dialect: &Dialect, scratch: &Path) -> Output {
    fs::write(scratch.join("gyre_abi.h"), header).unwrap();
    let source = scratch.join(if dialect.cxx { "check.cpp" } else { "check.c" });
    fs::write(&source, translation_unit()).unwrap();
    let (variable, default) = if dialect.cxx {
        ("CXX", "c++")
    } else {
        ("CC", "cc")
    };
    let compiler = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    Process::new(&compiler)
        .args(dialect.flags)
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic-errors",
            "-fsyntax-only",
            "-I",
        ])
        .arg(scratch)
        .arg(&source)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run the C compiler `{compiler}` (set {variable} to choose one): {error}")
        })
}

#[test]
fn c_header_compiles_and_matches_rust_in_every_dialect() {
    let header = abigen::c_header();
    for dialect in DIALECTS {
        let scratch = Scratch::new(&format!("ok-{}", dialect.label));
        let output = compile(&header, dialect, &scratch.0);
        assert!(
            output.status.success(),
            "gyre_abi.h does not compile as {}:\n{}",
            dialect.label,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Replaces the only occurrence of `from` in `text` with `to`.
fn patch(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` is not in the header once"
    );
    text.replacen(from, to, 1)
}

#[test]
fn c_header_asserts_reject_a_wrong_layout() {
    let header = abigen::c_header();
    let ring = &abigen::structs()[0];
    let tail = ring.field("tail").unwrap().offset;
    let reserved0 = ring.field("reserved0").unwrap();
    let Shape::Words(reserved0_len) = reserved0.shape else {
        panic!("RingHeader.reserved0 is an array");
    };
    // An assert that claims the wrong offset, and a struct that no longer matches its
    // asserts (one reserved word fewer moves `tail`).
    let wrong_assert = patch(
        &header,
        &format!("GYRE_OFFSETOF(GyreRingHeader, tail) == {tail},"),
        &format!("GYRE_OFFSETOF(GyreRingHeader, tail) == {},", tail + 4),
    );
    let declaration = |len: usize| {
        format!(
            "gyre_u32 reserved0[{len}]; /* offset {} */\n    gyre_u32 tail;",
            reserved0.offset
        )
    };
    let wrong_struct = patch(
        &header,
        &declaration(reserved0_len),
        &declaration(reserved0_len - 1),
    );
    for dialect in DIALECTS {
        for (what, broken) in [("assert", &wrong_assert), ("struct", &wrong_struct)] {
            let scratch = Scratch::new(&format!("bad-{what}-{}", dialect.label));
            let output = compile(broken, dialect, &scratch.0);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "a wrong {what} compiled as {}",
                dialect.label
            );
            assert!(
                stderr.contains("GyreRingHeader, tail"),
                "a wrong {what} failed as {} but not on the tail assert:\n{stderr}",
                dialect.label
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// WGSL
// ---------------------------------------------------------------------------------------

fn parse_wgsl(source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)))
}

fn validate(module: &naga::Module, source: &str) {
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(module)
    .unwrap_or_else(|error| panic!("{}", error.emit_to_string(source)));
}

fn checked_in_wgsl() -> (String, naga::Module) {
    let source = read_checked_in(abigen::WGSL_PATH);
    let module = parse_wgsl(&source);
    (source, module)
}

#[test]
fn wgsl_parses_and_validates() {
    let (source, module) = checked_in_wgsl();
    validate(&module, &source);
}

/// The structs can back storage buffers (host-shareable, fixed-size) as the ring shader
/// will use them.
#[test]
fn wgsl_structs_bind_as_storage() {
    let (mut source, _) = checked_in_wgsl();
    for (binding, layout) in abigen::structs().iter().enumerate() {
        let _ = writeln!(
            source,
            "@group(0) @binding({binding}) var<storage, read_write> check_{binding}: {};",
            layout.name
        );
    }
    source.push_str(
        "@compute @workgroup_size(1) fn main() {\n\
         check_0.tail = check_1.seq + check_2.state;\n}\n",
    );
    let module = parse_wgsl(&source);
    validate(&module, &source);
}

#[test]
fn wgsl_struct_layouts_match_rust() {
    let (_, module) = checked_in_wgsl();
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();

    let expected_spans = [
        ("RingHeader", size_of::<RingHeader>()),
        ("SlotHeader", size_of::<SlotHeader>()),
        ("ControlBlock", size_of::<ControlBlock>()),
        ("DeadLetterPrefix", size_of::<DeadLetterPrefix>()),
    ];
    for layout in abigen::structs() {
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, ty)| ty.name.as_deref() == Some(layout.name))
            .unwrap_or_else(|| panic!("no struct {} in the WGSL module", layout.name));
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{} is not a struct in WGSL", layout.name);
        };
        let rust_span = expected_spans
            .iter()
            .find(|(name, _)| *name == layout.name)
            .map(|&(_, size)| size)
            .unwrap();
        assert_eq!(*span as usize, rust_span, "span of {}", layout.name);
        assert_eq!(
            layouter[handle].alignment.round_up(1) as usize,
            layout.align,
            "alignment of {}",
            layout.name
        );

        let wgsl: Vec<(String, usize, Shape)> = members
            .iter()
            .map(|member| {
                let name = member.name.clone().unwrap_or_default();
                (name, member.offset as usize, shape_of(&module, member.ty))
            })
            .collect();
        let rust: Vec<(String, usize, Shape)> = layout
            .fields
            .iter()
            .map(|field| (field.name.to_owned(), field.offset, field.shape))
            .collect();
        assert_eq!(wgsl, rust, "members of {}", layout.name);
    }

    // The offsets the ABI rules single out, against `offset_of!` directly.
    let structs = abigen::structs();
    let offset = |index: usize, field: &str| structs[index].field(field).unwrap().offset;
    assert_eq!(offset(0, "tail"), core::mem::offset_of!(RingHeader, tail));
    assert_eq!(offset(0, "head"), core::mem::offset_of!(RingHeader, head));
    assert_eq!(
        offset(2, "state"),
        core::mem::offset_of!(ControlBlock, state)
    );
}

/// The shape of a WGSL member type: `u32` or `array<u32, N>` with a 4-byte stride.
fn shape_of(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Shape {
    let is_u32 = |ty: naga::Handle<naga::Type>| {
        matches!(
            module.types[ty].inner,
            naga::TypeInner::Scalar(naga::Scalar::U32)
        )
    };
    match module.types[ty].inner {
        naga::TypeInner::Scalar(naga::Scalar::U32) => Shape::Word,
        naga::TypeInner::Array {
            base,
            size: naga::ArraySize::Constant(len),
            stride: 4,
        } if is_u32(base) => Shape::Words(len.get() as usize),
        ref other => panic!("unexpected member type {other:?}"),
    }
}

#[test]
fn wgsl_constants_match_rust() {
    let (_, module) = checked_in_wgsl();
    let wgsl: BTreeMap<String, u32> = module
        .constants
        .iter()
        .map(|(_, constant)| {
            let name = constant.name.clone().expect("WGSL constants are named");
            let value = match module.global_expressions[constant.init] {
                naga::Expression::Literal(naga::Literal::U32(value)) => value,
                ref other => panic!("{name} is not a u32 literal: {other:?}"),
            };
            (name, value)
        })
        .collect();
    let rust: BTreeMap<String, u32> = rust_constants()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    assert_eq!(wgsl, rust);
}
