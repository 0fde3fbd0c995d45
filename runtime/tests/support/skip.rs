//! One rule for tests whose subject needs a tool (g++, an adapter, prebuilt images):
//! under `cargo xtask ci`, which sets `GYRE_CI=1` and installs every such tool
//! (`cargo xtask setup`), a missing tool fails the test; elsewhere the test is skipped
//! and says why on stderr. Included by path from the test crates that need it.

/// The variable `cargo xtask ci` sets on every step.
pub const CI_VAR: &str = "GYRE_CI";

/// Whether the tests run under `cargo xtask ci`.
pub fn under_ci() -> bool {
    std::env::var_os(CI_VAR).is_some_and(|v| v == "1")
}

/// Skips `subject` because of `why`, loudly; under `cargo xtask ci` it fails instead.
///
/// # Panics
/// Under `cargo xtask ci` (`GYRE_CI=1`), always.
pub fn skip(subject: &str, why: &dyn std::fmt::Display) {
    assert!(
        !under_ci(),
        "{CI_VAR}=1 (cargo xtask ci) but {subject} cannot run: {why}; under CI a missing \
         tool is a failure, not a skip"
    );
    eprintln!("SKIPPED {subject}: {why} (under `cargo xtask ci` this is a failure)");
}
