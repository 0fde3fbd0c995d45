//! Backend choice in a gyre built without feature `cuda` (and, for the wgpu test, without
//! feature `wgpu`): the GPU backends exist (code naming them compiles everywhere) but
//! building a runtime with one says to enable the feature; `Auto` is the CPU backend.
#![cfg(not(feature = "cuda"))]

use gyre::{Backend, Error, Runtime};

#[test]
fn cuda_backends_without_the_feature_say_to_enable_it() {
    for (backend, name) in [
        (Backend::Cuda, "cuda"),
        (Backend::CudaEmulated, "cuda-emulated"),
    ] {
        let err = Runtime::builder().backend(backend).build().unwrap_err();
        let Error::BackendUnavailable {
            backend: reported,
            ref reason,
        } = err
        else {
            panic!("expected BackendUnavailable, got {err:?}");
        };
        assert_eq!(reported, name);
        assert!(reason.contains("`cuda` feature"), "{reason}");
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
    }
}

#[test]
#[cfg(not(feature = "wgpu"))]
fn wgpu_backends_without_the_feature_say_to_enable_it() {
    for (backend, name) in [
        (Backend::Wgpu, "wgpu"),
        (Backend::WgpuSoftware, "wgpu-software"),
    ] {
        let err = Runtime::builder().backend(backend).build().unwrap_err();
        let Error::BackendUnavailable {
            backend: reported,
            ref reason,
        } = err
        else {
            panic!("expected BackendUnavailable, got {err:?}");
        };
        assert_eq!(reported, name);
        assert!(reason.contains("`wgpu` feature"), "{reason}");
        assert!(err.to_string().contains("`wgpu` feature"), "{err}");
    }
}

#[test]
fn auto_and_cpu_build_the_cpu_backend() {
    for backend in [Backend::Auto, Backend::Cpu] {
        let runtime = Runtime::builder()
            .backend(backend)
            .workers(1)
            .build()
            .unwrap();
        assert_eq!(runtime.backend_name(), "cpu");
    }
}
