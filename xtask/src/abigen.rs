//! Generates the C and WGSL mirrors of [`gyre_runtime::abi`].
//!
//! Nothing here restates a layout: struct offsets and sizes come from `offset_of!` and
//! `size_of` on the Rust types, constants from the Rust constants themselves, and the
//! `Command`/`State`/`PortKind`/`DeadReason` values from their `from_word` decoders.
//! What this module adds is the list of fields per struct (checked for completeness at
//! compile time by an exhaustive pattern, and for order and gaps by
//! [`StructLayout::check`]) and the list of constants with the names they get in C and
//! WGSL.
//!
//! Output is deterministic: the same Rust ABI always gives byte-identical files.

use core::fmt::Write as _;
use core::mem::{offset_of, size_of};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gyre_runtime::abi::{
    self, fault, status, Command, ControlBlock, DeadLetterPrefix, DeadReason, PortKind, RingHeader,
    SlotHeader, State,
};

/// Path of the generated C header, relative to the workspace root.
pub const C_HEADER_PATH: &str = "kernels/include/gyre_abi.h";

/// Path of the generated WGSL module, relative to the workspace root.
pub const WGSL_PATH: &str = "shaders/gyre_abi.wgsl";

/// Prefix of every generated constant, in C and in WGSL alike.
pub const CONST_PREFIX: &str = "GYRE_";

/// Prefix of the generated C struct names (`RingHeader` becomes `GyreRingHeader`).
pub const C_STRUCT_PREFIX: &str = "Gyre";

/// Shape of one struct field. Every shared word is a `u32`, so a field is either one
/// word or an array of them; any other field type does not compile here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One `u32`.
    Word,
    /// A `[u32; N]` with this `N`.
    Words(usize),
}

/// Field types the generator can express, with their [`Shape`].
trait FieldShape {
    const SHAPE: Shape;
}

impl FieldShape for u32 {
    const SHAPE: Shape = Shape::Word;
}

impl<const N: usize> FieldShape for [u32; N] {
    const SHAPE: Shape = Shape::Words(N);
}

/// Shape and size of the field that `project` borrows. `project` is never called: it
/// only names the field's type.
fn field_shape<T, F: FieldShape>(_project: fn(&T) -> &F) -> (Shape, usize) {
    (F::SHAPE, size_of::<F>())
}

/// One field of an ABI struct, as laid out by rustc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// The Rust field name, used unchanged in C and WGSL.
    pub name: &'static str,
    /// `offset_of!` of the field.
    pub offset: usize,
    /// `size_of` of the field's type.
    pub size: usize,
    /// Word or word array.
    pub shape: Shape,
}

/// One ABI struct, as laid out by rustc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StructLayout {
    /// The Rust type name; the WGSL struct has this name, the C struct gets
    /// [`C_STRUCT_PREFIX`] in front.
    pub name: &'static str,
    /// `size_of` of the struct.
    pub size: usize,
    /// `align_of` of the struct.
    pub align: usize,
    /// The fields in declaration order.
    pub fields: Vec<FieldLayout>,
}

impl StructLayout {
    /// The name of the C struct.
    pub fn c_name(&self) -> String {
        format!("{C_STRUCT_PREFIX}{}", self.name)
    }

    /// The field named `name`, if there is one.
    pub fn field(&self, name: &str) -> Option<&FieldLayout> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// Checks that the fields are listed in memory order, tile the struct without gaps
    /// and end at its size. The generated files declare fields in list order, so a
    /// list out of order would give C and WGSL a different layout than Rust.
    ///
    /// # Errors
    ///
    /// Describes the first field that does not start where the previous one ended, or
    /// the gap at the end.
    pub fn check(&self) -> Result<(), String> {
        let mut end = 0;
        for field in &self.fields {
            if field.offset != end {
                return Err(format!(
                    "{}.{} is at offset {} but the fields before it end at {end}",
                    self.name, field.name, field.offset
                ));
            }
            end = field.offset + field.size;
        }
        if end == self.size {
            Ok(())
        } else {
            Err(format!(
                "the fields of {} end at {end} but the struct is {} bytes",
                self.name, self.size
            ))
        }
    }
}

/// Builds the [`StructLayout`] of `$ty` from the listed fields.
///
/// The never-called closure destructures `$ty` with exactly these fields and no `..`,
/// so adding a field to the Rust type without listing it here fails to compile (rustc
/// words it as "pattern requires `..` due to inaccessible fields").
macro_rules! struct_layout {
    ($ty:ident { $($field:ident),+ $(,)? }) => {{
        let _exhaustive = |value: $ty| {
            let $ty { $($field: _),+ } = value;
        };
        StructLayout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            align: core::mem::align_of::<$ty>(),
            fields: vec![$({
                let (shape, size) = field_shape(|value: &$ty| &value.$field);
                FieldLayout {
                    name: stringify!($field),
                    offset: offset_of!($ty, $field),
                    size,
                    shape,
                }
            }),+],
        }
    }};
}

/// The ABI structs, in the order they are emitted.
pub fn structs() -> Vec<StructLayout> {
    vec![
        struct_layout!(RingHeader {
            magic,
            abi_version,
            capacity,
            slot_bytes,
            origin,
            reserved0,
            tail,
            reserved1,
            head,
            reserved2,
        }),
        struct_layout!(SlotHeader { seq, tag, corr }),
        struct_layout!(ControlBlock {
            magic,
            abi_version,
            kernel_id,
            command,
            command_epoch,
            reserved0,
            state,
            ack_epoch,
            heartbeat,
            error_code,
            received,
            processed,
            emitted,
            stalls,
            errors,
            reserved1,
        }),
        struct_layout!(DeadLetterPrefix {
            reason,
            code,
            port,
            kind,
        }),
    ]
}

/// How a constant's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Radix {
    /// Decimal.
    Dec,
    /// Hexadecimal.
    Hex,
    /// Hexadecimal, with the four little-endian bytes shown as ASCII in a comment.
    Magic,
    /// The bits of an `i32`: a C `int` in decimal (negative ones in parentheses), and in
    /// WGSL, where handlers return `u32`, the same bits as a `u32` (hexadecimal when
    /// negative).
    Signed,
}

/// One generated constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constant {
    /// The name without [`CONST_PREFIX`].
    pub name: String,
    /// The value, taken from the Rust ABI.
    pub value: u32,
    /// How the value is written.
    pub radix: Radix,
}

impl Constant {
    /// The name in C and WGSL: [`CONST_PREFIX`] then [`Constant::name`].
    pub fn full_name(&self) -> String {
        format!("{CONST_PREFIX}{}", self.name)
    }

    /// The value as a WGSL literal; also the C literal of every radix but
    /// [`Radix::Signed`] (C and WGSL share the `u` suffix).
    fn wgsl_literal(&self) -> String {
        match self.radix {
            Radix::Dec => format!("{}u", self.value),
            Radix::Signed if self.value.cast_signed() >= 0 => format!("{}u", self.value),
            Radix::Hex | Radix::Magic | Radix::Signed => format!("0x{:X}u", self.value),
        }
    }

    /// The value as a C literal.
    fn c_literal(&self) -> String {
        match self.radix {
            Radix::Signed => {
                let value = self.value.cast_signed();
                if value < 0 {
                    format!("({value})")
                } else {
                    value.to_string()
                }
            }
            Radix::Dec | Radix::Hex | Radix::Magic => self.wgsl_literal(),
        }
    }

    /// A note on the value: the ASCII spelling of a magic word.
    fn note(&self) -> Option<String> {
        (self.radix == Radix::Magic).then(|| {
            let text: String = self
                .value
                .to_le_bytes()
                .iter()
                .map(|&byte| {
                    if byte.is_ascii_graphic() {
                        char::from(byte)
                    } else {
                        '?'
                    }
                })
                .collect();
            format!("\"{text}\" read as little-endian")
        })
    }
}

/// A titled group of constants; each group becomes one block in the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstantGroup {
    /// One line saying what the group is.
    pub title: &'static str,
    /// The constants, in output order.
    pub constants: Vec<Constant>,
}

/// A top-level constant of `gyre_runtime::abi`, under its own name.
macro_rules! abi_constant {
    ($name:ident, $radix:ident) => {
        Constant {
            name: stringify!($name).to_owned(),
            value: abi::$name,
            radix: Radix::$radix,
        }
    };
}

/// A constant of `gyre_runtime::abi::fault`, named `FAULT_` and its own name.
macro_rules! fault_code {
    ($name:ident) => {
        Constant {
            name: concat!("FAULT_", stringify!($name)).to_owned(),
            value: fault::$name,
            radix: Radix::Dec,
        }
    };
}

/// A constant of `gyre_runtime::abi::status`, an `i32`, under its own name.
macro_rules! status_code {
    ($name:ident) => {
        Constant {
            name: stringify!($name).to_owned(),
            value: status::$name.cast_unsigned(),
            radix: Radix::Signed,
        }
    };
}

/// `CamelCase` to `SCREAMING_SNAKE_CASE`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The values of a `#[repr(u32)]` enum, found by decoding every word up to
/// `u16::MAX` (the variants need not be contiguous), each named `prefix` and its
/// variant name in `SCREAMING_SNAKE_CASE`.
fn enum_constants<E: core::fmt::Debug>(
    prefix: &str,
    decode: fn(u32) -> Option<E>,
) -> Vec<Constant> {
    (0..=u32::from(u16::MAX))
        .filter_map(|word| decode(word).map(|variant| (word, variant)))
        .map(|(word, variant)| Constant {
            name: format!("{prefix}{}", screaming_snake(&format!("{variant:?}"))),
            value: word,
            radix: Radix::Dec,
        })
        .collect()
}

/// Every generated constant, in output order.
pub fn constants() -> Vec<ConstantGroup> {
    vec![
        ConstantGroup {
            title: "Layout version, magic words and sizes.",
            constants: vec![
                abi_constant!(ABI_VERSION, Dec),
                abi_constant!(RING_MAGIC, Magic),
                abi_constant!(CONTROL_MAGIC, Magic),
                abi_constant!(LINE_BYTES, Dec),
                abi_constant!(RING_HEADER_BYTES, Dec),
                abi_constant!(CONTROL_BLOCK_BYTES, Dec),
                abi_constant!(DEAD_LETTER_PREFIX_BYTES, Dec),
                abi_constant!(SLOT_HEADER_BYTES, Dec),
                abi_constant!(MIN_SLOT_BYTES, Dec),
                abi_constant!(DEFAULT_SLOT_BYTES, Dec),
                abi_constant!(MAX_SLOT_BYTES, Dec),
                abi_constant!(MAX_CAPACITY, Dec),
                abi_constant!(PAYLOAD_ALIGN, Dec),
            ],
        },
        ConstantGroup {
            title: "Slot tags: message kind in the low 16 bits, sender id in the high 16.",
            constants: vec![
                abi_constant!(TAG_KIND_MASK, Hex),
                abi_constant!(TAG_SENDER_SHIFT, Dec),
                abi_constant!(KIND_MESSAGE, Dec),
                abi_constant!(KIND_TIMED, Dec),
                abi_constant!(KIND_CANCELLED, Hex),
                abi_constant!(HOST_SENDER_ID, Hex),
            ],
        },
        ConstantGroup {
            title: "Commands (ControlBlock.command), written by the host.",
            constants: enum_constants("CMD_", Command::from_word),
        },
        ConstantGroup {
            title: "States (ControlBlock.state), written by the kernel.",
            constants: enum_constants("STATE_", State::from_word),
        },
        ConstantGroup {
            title: "Fault codes (ControlBlock.error_code), written by the kernel.",
            constants: vec![
                fault_code!(NONE),
                fault_code!(HANDLER_PANIC),
                fault_code!(DEVICE_ERROR),
                fault_code!(WATCHDOG),
                fault_code!(BAD_COMMAND),
            ],
        },
        ConstantGroup {
            title: "Port kinds (the kind of a port in a kernel's descriptor), written by the host.",
            constants: enum_constants("PORT_", PortKind::from_word),
        },
        ConstantGroup {
            title: "Dead-letter reasons (DeadLetterPrefix.reason), written by the device.",
            constants: enum_constants("DEAD_", DeadReason::from_word),
        },
        ConstantGroup {
            title: "Handler results and gyre_emit errors: int in C, their bits as u32 in WGSL.",
            constants: vec![
                status_code!(OK),
                status_code!(ERR_NO_PORT),
                status_code!(ERR_TOO_LARGE),
                status_code!(ERR_TOO_MANY),
                status_code!(ERR_NO_HANDLER),
                status_code!(FAULT_KERNEL),
                status_code!(BUILTIN_ERR_PARAMS),
                status_code!(BUILTIN_ERR_INPUT),
                status_code!(BUILTIN_ERR_STATE),
            ],
        },
    ]
}

/// Panics when a struct's field list is out of order or has gaps; see
/// [`StructLayout::check`].
fn checked_structs() -> Vec<StructLayout> {
    let structs = structs();
    for layout in &structs {
        if let Err(message) = layout.check() {
            panic!("abigen field table is wrong: {message}");
        }
    }
    structs
}

/// The C header up to the constants, after the first line of the banner.
const C_PROLOGUE: &str = r" *
 * Generated by `cargo xtask abi` from runtime/src/abi.rs; do not edit.
 * What each word means: runtime/src/abi.rs. Who writes it, when and with which
 * ordering: runtime/docs/ABI.md.
 *
 * Works as C99 or later, C++11 or later, and under NVRTC, which has no standard
 * headers. Every struct size and field offset is checked at compile time.
 */
#ifndef GYRE_ABI_H
#define GYRE_ABI_H

#if defined(__CUDACC_RTC__)
/* NVRTC has no <stdint.h> or <stddef.h>; unsigned int is 32 bits on every CUDA
 * target. NVRTC 13.4 and later have __builtin_offsetof; before, __INTADDR__ makes
 * the null-pointer offsetof a constant expression. */
typedef unsigned int gyre_u32;
#if defined(__has_builtin)
#if __has_builtin(__builtin_offsetof)
#define GYRE_OFFSETOF(type, field) __builtin_offsetof(type, field)
#endif
#endif
#ifndef GYRE_OFFSETOF
#define GYRE_OFFSETOF(type, field) __INTADDR__(&((type *)0)->field)
#endif
#else
#include <stddef.h>
#include <stdint.h>
typedef uint32_t gyre_u32;
#define GYRE_OFFSETOF(type, field) offsetof(type, field)
#endif

/* GYRE_STATIC_ASSERT(cond, msg): static_assert in C++11, _Static_assert in C11,
 * and before those a typedef of an array of negative size, which fails to compile. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define GYRE_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#elif !defined(__cplusplus) && defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define GYRE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#else
#define GYRE_STATIC_ASSERT_JOIN2(a, b) a##b
#define GYRE_STATIC_ASSERT_JOIN(a, b) GYRE_STATIC_ASSERT_JOIN2(a, b)
#define GYRE_STATIC_ASSERT(cond, msg) \
    typedef char GYRE_STATIC_ASSERT_JOIN(gyre_static_assert_line_, __LINE__)[(cond) ? 1 : -1]
#endif
";

/// The WGSL module up to the constants, after the first line of the banner.
const WGSL_PROLOGUE: &str = r"//
// Generated by `cargo xtask abi` from runtime/src/abi.rs; do not edit.
// What each word means: runtime/src/abi.rs. Who writes it, when and with which
// ordering: runtime/docs/ABI.md.
//
// The structs below are the layout contract, in plain u32 words. A shader that
// shares a word with other invocations or with the host accesses it through an
// atomic view of the same layout.
";

/// The contents of [`C_HEADER_PATH`].
///
/// # Panics
///
/// When the field table in this module is out of order or has gaps.
pub fn c_header() -> String {
    let structs = checked_structs();
    let groups = constants();
    let mut out = String::new();
    // Writing to a String cannot fail: every `writeln!` result below is ignored.
    let w = &mut out;

    let _ = writeln!(
        w,
        "/*\n * gyre_abi.h: the gyre memory contract, ABI version {}, for CUDA C, C and C++.",
        abi::ABI_VERSION
    );
    w.push_str(C_PROLOGUE);

    let width = groups
        .iter()
        .flat_map(|group| &group.constants)
        .map(|constant| constant.full_name().len())
        .max()
        .unwrap_or(0);
    for group in &groups {
        let _ = writeln!(w, "\n/* {} */", group.title);
        for constant in &group.constants {
            let name = constant.full_name();
            let _ = write!(w, "#define {name:<width$} {}", constant.c_literal());
            if let Some(note) = constant.note() {
                let _ = write!(w, " /* {note} */");
            }
            w.push('\n');
        }
    }

    for layout in &structs {
        let c_name = layout.c_name();
        let _ = writeln!(
            w,
            "\n/* {c_name} ({} bytes): see gyre_runtime::abi::{}. */",
            layout.size, layout.name
        );
        let _ = writeln!(w, "typedef struct {c_name} {{");
        let decls: Vec<String> = layout
            .fields
            .iter()
            .map(|field| match field.shape {
                Shape::Word => format!("gyre_u32 {};", field.name),
                Shape::Words(len) => format!("gyre_u32 {}[{len}];", field.name),
            })
            .collect();
        let decl_width = decls.iter().map(String::len).max().unwrap_or(0);
        for (decl, field) in decls.iter().zip(&layout.fields) {
            let _ = writeln!(w, "    {decl:<decl_width$} /* offset {} */", field.offset);
        }
        let _ = writeln!(w, "}} {c_name};");
    }

    w.push_str(
        "\n/* Layout checks: each must hold for this header to match runtime/src/abi.rs. */\n",
    );
    w.push_str("GYRE_STATIC_ASSERT(sizeof(gyre_u32) == 4, \"sizeof(gyre_u32) == 4\");\n");
    for layout in &structs {
        let c_name = layout.c_name();
        let size = layout.size;
        let _ = writeln!(
            w,
            "GYRE_STATIC_ASSERT(sizeof({c_name}) == {size}, \"sizeof({c_name}) == {size}\");"
        );
        for field in &layout.fields {
            let (name, offset) = (field.name, field.offset);
            let _ = writeln!(
                w,
                "GYRE_STATIC_ASSERT(GYRE_OFFSETOF({c_name}, {name}) == {offset}, \
                 \"offsetof({c_name}, {name}) == {offset}\");"
            );
        }
    }

    w.push_str("\n#endif /* GYRE_ABI_H */\n");
    out
}

/// The contents of [`WGSL_PATH`].
///
/// # Panics
///
/// When the field table in this module is out of order or has gaps.
pub fn wgsl() -> String {
    let structs = checked_structs();
    let groups = constants();
    let mut out = String::new();
    // Writing to a String cannot fail: every `writeln!` result below is ignored.
    let w = &mut out;

    let _ = writeln!(
        w,
        "// gyre_abi.wgsl: the gyre memory contract, ABI version {}, for WGSL.",
        abi::ABI_VERSION
    );
    w.push_str(WGSL_PROLOGUE);

    for group in &groups {
        let _ = writeln!(w, "\n// {}", group.title);
        for constant in &group.constants {
            let _ = write!(
                w,
                "const {}: u32 = {};",
                constant.full_name(),
                constant.wgsl_literal()
            );
            if let Some(note) = constant.note() {
                let _ = write!(w, " // {note}");
            }
            w.push('\n');
        }
    }

    for layout in &structs {
        let _ = writeln!(
            w,
            "\n// {} bytes: see gyre_runtime::abi::{}.",
            layout.size, layout.name
        );
        let _ = writeln!(w, "struct {} {{", layout.name);
        let decls: Vec<String> = layout
            .fields
            .iter()
            .map(|field| match field.shape {
                Shape::Word => format!("{}: u32,", field.name),
                Shape::Words(len) => format!("{}: array<u32, {len}>,", field.name),
            })
            .collect();
        let decl_width = decls.iter().map(String::len).max().unwrap_or(0);
        for (decl, field) in decls.iter().zip(&layout.fields) {
            let _ = writeln!(w, "    {decl:<decl_width$} // offset {}", field.offset);
        }
        w.push_str("}\n");
    }
    out
}

/// One generated file: where it goes and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Path relative to the workspace root.
    pub path: &'static str,
    /// The generated text.
    pub contents: String,
}

/// Both generated files.
pub fn outputs() -> [Output; 2] {
    [
        Output {
            path: C_HEADER_PATH,
            contents: c_header(),
        },
        Output {
            path: WGSL_PATH,
            contents: wgsl(),
        },
    ]
}

/// Whether a generated file on disk matches the generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// The file holds exactly what the generator produces.
    Fresh,
    /// The file differs from the generator's output.
    Stale,
    /// There is no such file.
    Missing,
}

/// Compares every generated file under `root` with the generator's output.
///
/// # Errors
///
/// An I/O error other than a missing file.
pub fn check(root: &Path) -> io::Result<Vec<(PathBuf, Freshness)>> {
    outputs()
        .into_iter()
        .map(|output| {
            let path = root.join(output.path);
            let freshness = match fs::read_to_string(&path) {
                Ok(text) if text == output.contents => Freshness::Fresh,
                Ok(_) => Freshness::Stale,
                Err(error) if error.kind() == io::ErrorKind::NotFound => Freshness::Missing,
                Err(error) => return Err(error),
            };
            Ok((path, freshness))
        })
        .collect()
}

/// Writes every generated file under `root` whose contents changed, and returns each
/// path with whether it was written. Unchanged files are left alone so that crates
/// embedding them do not rebuild.
///
/// # Errors
///
/// Any I/O error reading or writing the files.
pub fn write(root: &Path) -> io::Result<Vec<(PathBuf, bool)>> {
    outputs()
        .into_iter()
        .map(|output| {
            let path = root.join(output.path);
            let current = match fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(error) => return Err(error),
            };
            let changed = current.as_deref() != Some(output.contents.as_str());
            if changed {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::write(&path, &output.contents)?;
            }
            Ok((path, changed))
        })
        .collect()
}
