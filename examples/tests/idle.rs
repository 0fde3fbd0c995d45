//! Acceptance: 10,000 launched idle kernels stay under 2% CPU and 16 KB per kernel
//! beyond their ring slots.

#[test]
fn ten_thousand_idle_kernels_are_cheap() {
    let cost = gyre_examples::idle::measure(10_000, std::time::Duration::from_secs(2)).unwrap();
    println!("{cost}");
    assert!(cost.idle_cpu_share < 0.02, "{cost}");
    assert!(cost.overhead_bytes_per_kernel < 16_384.0, "{cost}");
}
