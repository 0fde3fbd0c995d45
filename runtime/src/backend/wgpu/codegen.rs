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
    // The handlers are distinct (`dispatch_cases`), but two may define the same function
    // name (one spec factory with different code baked in). A group is one WGSL module,
    // with one namespace: the later one's function is renamed (its definition, as WGSL
    // has no recursion and nothing else calls it), so each kernel runs its own code, as
    // in CUDA, where each source has a namespace of its own. Helpers the sources define
    // still share the namespace: a clash between them fails validation at their line.
    let mut names: Vec<String> = Vec::with_capacity(handlers.len());
    for (case, handler) in handlers.iter().enumerate() {
        let mut name = handler.function().to_owned();
        if let WgslHandler::Source {
            function,
            source,
            file,
        } = handler
        {
            let renamed = names
                .contains(function)
                .then(|| format!("{function}_gyre_case{case}"));
            match renamed
                .as_deref()
                .and_then(|new| rename_fn(source, function, new))
            {
                Some(source) => {
                    name = renamed.unwrap_or_default();
                    add(&mut module, file, &source);
                }
                None => add(&mut module, file, source),
            }
        }
        names.push(name);
    }
    let mut tail = String::from(
        "fn gyre_dispatch(handler: u32, ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, \
         bytes: u32) -> u32 {\n    switch handler {\n",
    );
    for (case, name) in names.iter().enumerate() {
        let _ = writeln!(
            tail,
            "        case {case}u: {{ return {name}(ctx, msg, bytes); }}"
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

/// `source` with the definition of function `function` (`fn function(`, any spacing)
/// renamed to `new`; `None` when it has no such definition (validation then reports the
/// missing function).
fn rename_fn(source: &str, function: &str, new: &str) -> Option<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut at = 0;
    while let Some(found) = source[at..].find("fn") {
        let start = at + found;
        at = start + 2;
        if source[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &source[at..];
        let name_at = rest.len() - rest.trim_start().len();
        if name_at == 0 {
            continue;
        }
        let after_name = &rest[name_at..];
        let Some(after) = after_name.strip_prefix(function) else {
            continue;
        };
        if after.trim_start().starts_with('(') {
            let name_start = at + name_at;
            return Some(format!(
                "{}{new}{}",
                &source[..name_start],
                &source[name_start + function.len()..]
            ));
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(function: &str, body: &str) -> WgslHandler {
        WgslHandler::Source {
            function: function.to_owned(),
            source: format!(
                "fn {function} (ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, \
                 bytes: u32) -> u32 {{\n    {body}\n}}\n"
            ),
            file: format!("{function}.wgsl"),
        }
    }

    #[test]
    fn rename_fn_renames_the_definition_only() {
        let source = "// fn f( in a comment\nfn ff(a: u32) -> u32 { return a; }\nfn  f (x: u32) -> u32 { return ff(x); }";
        assert_eq!(
            rename_fn(source, "f", "g").as_deref(),
            Some("// fn g( in a comment\nfn ff(a: u32) -> u32 { return a; }\nfn  f (x: u32) -> u32 { return ff(x); }")
        );
        let source = "fn ff(a: u32) -> u32 { return a; }\nfn  f (x: u32) -> u32 { return ff(x); }";
        assert_eq!(
            rename_fn(source, "f", "g").as_deref(),
            Some("fn ff(a: u32) -> u32 { return a; }\nfn  g (x: u32) -> u32 { return ff(x); }")
        );
        assert_eq!(rename_fn("fn other() {}", "f", "g"), None);
    }

    /// Two handlers defining one function name with different code make a valid module
    /// that dispatches each case to its own code.
    #[test]
    fn handlers_that_share_a_function_name_each_keep_their_code() {
        let handlers = [handler("f", "return 1u;"), handler("f", "return 2u;")];
        let module = group_module(&handlers, &[false, false], 16);
        validate(&module).unwrap();
        assert!(module
            .source
            .contains("case 0u: { return f(ctx, msg, bytes); }"));
        assert!(module
            .source
            .contains("case 1u: { return f_gyre_case1(ctx, msg, bytes); }"));
        assert!(module.source.contains("fn f_gyre_case1 (ctx"));
    }
}
