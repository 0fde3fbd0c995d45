//! GPU-only tests: the conformance scenarios of `cuda_emulated.rs` on a real NVIDIA GPU,
//! through the driver (cudarc), NVRTC and a cooperative launch.
//!
//! Ignored by default (no machine of this project's CI has a GPU); `cargo xtask
//! gpu-validate` runs them with `--ignored` and `GYRE_REQUIRE_GPU=1`, under which a
//! missing GPU is a failure, never a silent pass. Each scenario checks exact outputs,
//! counters and reports: a wrong kernel fails them.
#![cfg(feature = "cuda")]

mod cuda_scenarios;

use cuda_scenarios::Scenarios;

fn scenarios() -> Option<Scenarios> {
    match gyre_runtime::backend::cuda::default_device() {
        Ok(device) => {
            eprintln!("device: {}", device.describe());
            Some(Scenarios::new(device))
        }
        Err(e) => {
            assert!(
                std::env::var("GYRE_REQUIRE_GPU").as_deref() != Ok("1"),
                "GYRE_REQUIRE_GPU=1 but no usable GPU: {e}"
            );
            eprintln!("SKIPPED (no GPU): {e}");
            None
        }
    }
}

macro_rules! gpu_scenario {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        #[ignore = "needs an NVIDIA GPU: run `cargo xtask gpu-validate`"]
        fn $name() {
            if let Some(s) = scenarios() {
                s.$name();
            }
        }
    )*};
}

gpu_scenario!(
    echo_round_trip,
    wraparound_past_u32_max,
    full_rings,
    drain_with_messages_in_flight,
    terminate_returns_undelivered,
    handler_error_goes_to_dead_letters,
    heartbeat_and_counters,
    dead_letter_routes,
    compile_error_names_the_line,
    builtins_match_reference,
    handlers_have_their_own_namespaces,
    dead_letters_never_stall_the_group,
    terminated_means_nothing_more_comes,
);

#[test]
#[ignore = "needs an NVIDIA GPU: run `cargo xtask gpu-validate`"]
fn random_stops_hand_back_every_message_once() {
    if let Some(s) = scenarios() {
        s.random_stops_hand_back_every_message_once(40, std::time::Duration::from_millis(60));
    }
}

#[test]
fn without_a_gpu_the_device_probe_says_what_is_missing() {
    // Runs everywhere: on a machine without a driver the probe must not panic and must
    // say what is missing; with a GPU it must give a device.
    match gyre_runtime::backend::cuda::default_device() {
        Ok(device) => assert!(!device.is_emulated()),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("libcuda") || text.contains("device") || text.contains("driver"),
                "{text}"
            );
        }
    }
}
