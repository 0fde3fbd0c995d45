//! The generated WGSL module of a group: the ABI constants, the tick, the built-ins, the
//! group's user handlers, a dispatch over them and one entry point per kernel; and its
//! validation with naga, whose errors name the user's file and line.

use std::fmt::Write as _;

use crate::backend::device_plan::DeviceHandler;

/// A handler as the group module names it: [`DeviceHandler`], whose `Source` is WGSL
/// defining `fn FUNCTION(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>,
/// bytes: u32) -> u32`.
pub type WgslHandler = DeviceHandler;

/// A generated module and where each part of it came from.
#[derive(Clone, Debug)]
pub struct GroupModule {
    /// The WGSL text.
    pub source: String,
    /// `(first line, line count, file)` of each part, lines counted from 1.
    parts: Vec<(usize, usize, String)>,
}

impl GroupModule {
    /// The file and line within it of line `line` (from 1) of the module.
    pub fn locate(&self, line: usize) -> (String, usize) {
        for (first, count, file) in &self.parts {
            if line >= *first && line < first + count {
                return (file.clone(), line - first + 1);
            }
        }
        ("group.wgsl".to_owned(), line)
    }
}

/// Builds the module for a group: `handlers[i]` is dispatch case `i`; one entry point
/// `gyre_kernel_i` per kernel, a workgroup of `GYRE_WG` invocations where `parallel[i]`
/// (else one); messages of up to `msg_words` words.
pub fn group_module(handlers: &[WgslHandler], parallel: &[bool], msg_words: u32) -> GroupModule {
    let mut module = GroupModule {
        source: String::new(),
        parts: Vec::new(),
    };
    let add = |module: &mut GroupModule, file: &str, text: &str| {
        let first = module.source.lines().count() + 1;
        let mut text = text.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        module
            .parts
            .push((first, text.lines().count(), file.to_owned()));
        module.source.push_str(&text);
    };
    add(&mut module, "gyre_abi.wgsl", gyre_shaders::GYRE_ABI_WGSL);
    add(
        &mut module,
        "group.wgsl",
        &format!("const GYRE_MSG_WORDS: u32 = {msg_words}u;\n"),
    );
    add(&mut module, "tick.wgsl", gyre_shaders::TICK_WGSL);
    add(&mut module, "builtins.wgsl", gyre_shaders::BUILTINS_WGSL);
    let mut seen: Vec<&str> = Vec::new();
    for handler in handlers {
        if let WgslHandler::Source {
            function,
            source,
            file,
        } = handler
        {
            if seen.contains(&function.as_str()) {
                continue;
            }
            seen.push(function);
            add(&mut module, file, source);
        }
    }
    let mut tail = String::from(
        "fn gyre_dispatch(handler: u32, ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, \
         bytes: u32) -> u32 {\n    switch handler {\n",
    );
    for (case, handler) in handlers.iter().enumerate() {
        let _ = writeln!(
            tail,
            "        case {case}u: {{ return {}(ctx, msg, bytes); }}",
            handler.function()
        );
    }
    tail.push_str("        default: { return GYRE_ERR_NO_HANDLER; }\n    }\n}\n");
    for (k, &parallel) in parallel.iter().enumerate() {
        if parallel {
            let _ = writeln!(
                tail,
                "\n@compute @workgroup_size(64)\nfn gyre_kernel_{k}(@builtin(local_invocation_index) lid: u32) {{\n    gyre_tick_parallel({k}u, lid);\n}}"
            );
        } else {
            let _ = writeln!(
                tail,
                "\n@compute @workgroup_size(1)\nfn gyre_kernel_{k}() {{\n    gyre_tick({k}u);\n}}"
            );
        }
    }
    add(&mut module, "gyre_dispatch.wgsl", &tail);
    module
}

/// Parses and validates a module with naga. The error names the file and line of the
/// first problem (a user handler's own file and line), then naga's full report.
pub fn validate(module: &GroupModule) -> Result<(), String> {
    let parsed = naga::front::wgsl::parse_str(&module.source).map_err(|e| {
        let at = e
            .location(&module.source)
            .map(|l| module.locate(l.line_number as usize));
        describe(at, e.message(), &e.emit_to_string(&module.source))
    })?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    );
    validator.validate(&parsed).map_err(|e| {
        let at = e
            .location(&module.source)
            .map(|l| module.locate(l.line_number as usize));
        describe(
            at,
            &e.as_inner().to_string(),
            &e.emit_to_string(&module.source),
        )
    })?;
    Ok(())
}

fn describe(at: Option<(String, usize)>, message: &str, report: &str) -> String {
    match at {
        Some((file, line)) => format!("{file}:{line}: {message}\n{report}"),
        None => format!("{message}\n{report}"),
    }
}
