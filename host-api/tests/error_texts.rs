//! Error texts say what happened and what to do, and the advice works: each test follows
//! the advice a text gives and checks that it succeeds.

use std::time::Duration;

use gyre::{Error, KernelSpec, Placement, Runtime, State};

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    Runtime::builder().workers(1).build().unwrap()
}

fn echo(name: &str) -> KernelSpec<u64, u64> {
    KernelSpec::<u64, u64>::new(name).cpu(|x, out| Ok(out.emit(*x)?))
}

/// 65,536 bytes: more than the largest slot's payload (65,536 − 16).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Huge([u64; 8192]);

#[test]
fn a_type_larger_than_any_slot_is_told_to_split_not_to_raise_the_slot_size() {
    let rt = runtime();
    for spec in [
        KernelSpec::<Huge, u64>::new("huge"),
        KernelSpec::<Huge, u64>::new("huge").slot_bytes(64),
    ] {
        let err = rt.launch(spec.cpu(|_, _| Ok(()))).unwrap_err();
        assert!(
            matches!(err, Error::MessageTooLarge { size: 65536, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            !text.contains(".slot_bytes("),
            "advises a slot size: {text}"
        );
        assert!(text.contains("no slot size fits it"), "{text}");
        assert!(
            text.contains("split it into several messages") && text.contains("index or handle"),
            "{text}"
        );
    }
    // What the old text advised is indeed refused.
    let refused = rt
        .launch(
            KernelSpec::<Huge, u64>::new("huge")
                .slot_bytes(131_072)
                .cpu(|_, _| Ok(())),
        )
        .unwrap_err();
    assert!(matches!(refused, Error::Layout { .. }), "{refused:?}");
}

#[test]
fn a_type_that_fits_a_larger_slot_is_told_which_slot_size_and_that_size_works() {
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Big([u64; 1000]);

    let rt = runtime();
    let err = rt
        .launch(
            KernelSpec::<Big, u64>::new("big")
                .slot_bytes(64)
                .cpu(|_, _| Ok(())),
        )
        .unwrap_err();
    let Error::MessageTooLarge { suggested, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(suggested, 8192);
    assert!(err.to_string().contains(".slot_bytes(8192)"), "{err}");
    let k = rt
        .launch(
            KernelSpec::<Big, u64>::new("big")
                .slot_bytes(suggested)
                .cpu(|m, out| Ok(out.emit(m.0[999])?)),
        )
        .unwrap();
    k.activate().unwrap();
    let mut big = Big([0; 1000]);
    big.0[999] = 7;
    k.send(big).unwrap();
    assert_eq!(k.recv_timeout(WAIT).unwrap(), 7);
}

#[test]
fn restarting_a_running_kernel_says_to_stop_it_first_and_that_works() {
    let rt = runtime();
    let k = rt.launch(echo("running")).unwrap();
    k.activate().unwrap();
    let err = rt.restart(&k).unwrap_err();
    assert!(
        matches!(err, Error::Lifecycle { ref kernel, .. } if kernel == "running"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains("only a running kernel"), "{text}");
    assert!(
        text.contains("only a stopped (terminated or faulted) kernel can be restarted")
            && text.contains("drain or terminate it first, then restart it"),
        "{text}"
    );
    // The advice: terminate, then restart.
    k.terminate().unwrap();
    rt.restart(&k).unwrap();
    assert_eq!(k.state(), State::Launched);
    k.activate().unwrap();
    k.send(5).unwrap();
    assert_eq!(k.recv_timeout(WAIT).unwrap(), 5);
}

#[test]
fn a_receive_that_times_out_on_an_inactive_kernel_says_to_activate_it() {
    let rt = runtime();
    let k = rt.launch(echo("idle")).unwrap();
    k.send(1).unwrap();
    let err = k.recv_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("activate it"), "{err}");
    k.activate().unwrap();
    assert_eq!(k.recv_timeout(WAIT).unwrap(), 1);
}

#[test]
fn a_cycle_names_the_builder_method_that_allows_it() {
    let rt = runtime();
    let build = |allow: bool| {
        let mut g = rt.group("ring");
        let a = g.add(echo("a").no_host_output());
        let b = g.add(echo("b").no_host_output());
        g.route(a, 0, b).route(b, 0, a);
        if allow {
            g.allow_cycles();
        }
        g.launch()
    };
    let err = build(false).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("GroupBuilder::allow_cycles"), "{text}");
    assert!(!text.contains("(Group::allow_cycles)"), "{text}");
    build(true).unwrap().terminate();
}

#[test]
fn an_unknown_kernel_name_is_not_called_a_route_outside_routing() {
    let rt = runtime();
    let mut g = rt.group("g");
    let _ = g.add(echo("a"));
    let group = g.launch().unwrap();
    let err = group.terminate_kernel("nobody").unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("route names"), "{text}");
    assert!(
        text.contains("`nobody`") && text.contains("Group::kernel_names"),
        "{text}"
    );
    group.terminate();
}

#[test]
fn group_level_launch_errors_do_not_say_kernel() {
    let rt = runtime();
    let err = rt.pipeline::<u64>("empty").launch().unwrap_err();
    let text = err.to_string();
    assert!(!text.starts_with("could not launch kernel"), "{text}");
    assert!(text.contains("add one with .stage(spec)"), "{text}");
}

#[test]
fn an_over_aligned_type_is_told_how_to_fit() {
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C, align(32))]
    struct Wide([u64; 4]);

    let rt = runtime();
    let err = rt
        .launch(
            KernelSpec::<Wide, u64>::new("wide")
                .placement(Placement::Pool)
                .cpu(|_, _| Ok(())),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageAlignment { align: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("16 bytes or less"), "{err}");
}
