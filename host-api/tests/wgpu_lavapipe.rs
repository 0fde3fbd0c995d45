//! What only wgpu has, on any adapter, software ones allowed (`Backend::WgpuSoftware`:
//! Mesa's lavapipe in CI): naga's validation errors with file and line, and
//! `Backend::Wgpu` refusing a software adapter. What every device backend shares is in
//! `device_groups.rs`. Skipped (with a message) when no adapter opens, except under
//! `cargo xtask ci` (or with `GYRE_WGPU_ALLOW_SOFTWARE=1`), where that is a failure.
#![cfg(feature = "wgpu")]

#[path = "../../runtime/tests/support/skip.rs"]
mod support;

use gyre::{Backend, Error, KernelSpec, Runtime};

fn software() -> Option<Runtime> {
    match Runtime::builder()
        .backend(Backend::WgpuSoftware)
        .workers(1)
        .build()
    {
        Ok(runtime) => {
            assert_eq!(runtime.backend_name(), "wgpu-software");
            Some(runtime)
        }
        Err(e) => {
            assert!(
                std::env::var("GYRE_WGPU_ALLOW_SOFTWARE").as_deref() != Ok("1"),
                "GYRE_WGPU_ALLOW_SOFTWARE=1 but no wgpu adapter opened: {e}"
            );
            support::skip("the wgpu tests", &e);
            None
        }
    }
}

#[test]
fn a_handler_with_a_syntax_error_fails_at_launch_with_file_and_line() {
    let Some(runtime) = software() else { return };
    let err = runtime
        .launch(KernelSpec::<u32, u32>::new("broken").wgsl(
            "broken_handler",
            "fn broken_handler(ctx: ptr<function, GyreCtx>, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {\n\
             \x20   let x = (*msg).w[0];\n\
             \x20   return gyre_emit(ctx, 0u, msg, 4u) +;\n\
             }\n",
        ))
        .unwrap_err();
    let Error::Compile { ref compiler, .. } = err else {
        panic!("expected Error::Compile, got {err:?}");
    };
    assert_eq!(compiler, "naga (WGSL)");
    let text = err.to_string();
    assert!(
        text.contains("broken_handler.wgsl:3:"),
        "the message must point at line 3 of the handler: {text}"
    );
}

#[test]
fn the_hardware_wgpu_backend_refuses_a_software_adapter() {
    match Runtime::builder().backend(Backend::Wgpu).build() {
        Ok(runtime) => {
            eprintln!("a hardware wgpu adapter is present: nothing to check here");
            assert_eq!(runtime.backend_name(), "wgpu");
        }
        Err(Error::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "wgpu");
            assert!(
                reason.contains("software adapter") || reason.contains("no Vulkan"),
                "the adapter error must say what is missing: {reason}"
            );
            eprintln!("Backend::Wgpu is unavailable here: {reason}");
        }
        Err(other) => panic!("expected BackendUnavailable, got {other:?}"),
    }
}
