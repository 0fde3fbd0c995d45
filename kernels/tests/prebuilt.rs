//! The prebuilt images' lookup: unknown architectures have none, and what is listed can
//! be found. Under `cargo xtask ci`, which builds the images first (`xtask kernels`),
//! an empty list is a failure: the listing test would otherwise check nothing.

#[path = "../../runtime/tests/support/skip.rs"]
mod skip;

#[test]
fn an_unknown_architecture_has_no_prebuilt_image() {
    assert_eq!(gyre_kernels::prebuilt("sm_00"), None);
    assert_eq!(gyre_kernels::prebuilt(""), None);
    assert_eq!(gyre_kernels::prebuilt("compute_80"), None);
}

#[test]
fn every_listed_architecture_has_an_image_and_the_source() {
    let archs = gyre_kernels::prebuilt_archs();
    if archs.is_empty() {
        assert!(gyre_kernels::prebuilt_source().is_none());
        skip::skip(
            "the prebuilt image check",
            &"no prebuilt CUDA image is embedded (run `cargo xtask kernels`, then rebuild)",
        );
        return;
    }
    for arch in archs {
        let image = gyre_kernels::prebuilt(arch).unwrap_or_else(|| panic!("{arch} listed"));
        assert!(!image.is_empty(), "{arch}: empty image");
        assert!(
            gyre_kernels::PREBUILT_CUBIN_ARCHS.contains(arch)
                || *arch == gyre_kernels::PREBUILT_PTX_ARCH,
            "{arch} is not an architecture xtask builds"
        );
    }
    assert!(gyre_kernels::prebuilt_source().is_some());
    eprintln!("prebuilt CUDA images embedded: {archs:?}");
}
