//! Unit tests of the built-in handlers.

use super::*;

fn rec(key: u32, seq: u32, value: f32) -> Record {
    Record {
        key,
        seq,
        value,
        aux: 0xA0A0 + seq,
    }
}

/// Runs `inputs` through the reference; returns every emit as (port, bytes).
fn run(b: Builtin, inputs: &[Record]) -> Vec<(u32, Vec<u8>)> {
    b.validate().unwrap();
    let mut r = b.reference();
    let mut out = Vec::new();
    for input in inputs {
        r.handle(bytemuck::bytes_of(input), &mut |port, bytes| {
            out.push((port, bytes.to_vec()));
        })
        .unwrap();
    }
    out
}

fn records(out: &[(u32, Vec<u8>)]) -> Vec<(u32, Record)> {
    out.iter()
        .map(|(p, b)| (*p, bytemuck::pod_read_unaligned(b)))
        .collect()
}

#[test]
fn echo_forwards_the_first_bytes() {
    let b = Builtin::Echo { bytes: 5 };
    let mut r = b.reference();
    let mut out = Vec::new();
    r.handle(b"hello, world", &mut |p, bytes| {
        out.push((p, bytes.to_vec()));
    })
    .unwrap();
    assert_eq!(out, [(0, b"hello".to_vec())]);
    assert_eq!(
        r.handle(b"hey", &mut |_, _| panic!("no emit")),
        Err(BuiltinError::Input { len: 3, need: 5 })
    );
    assert_eq!(ERR_INPUT, BuiltinError::Input { len: 3, need: 5 }.code());
}

#[test]
fn affine_rounds_product_and_sum_separately() {
    let out = records(&run(Builtin::Affine { a: 2.0, b: 1.0 }, &[rec(1, 2, 3.0)]));
    assert_eq!(
        out,
        [(
            0,
            Record {
                value: 7.0,
                ..rec(1, 2, 3.0)
            }
        )]
    );
    // a * v is 1 - 2^-46 exactly, which rounds to 1.0 in f32; then 1.0 - 1.0 = 0.
    // A fused multiply-add would give -2^-46 instead.
    let a = 1.0 + f32::EPSILON; // 1 + 2^-23
    let v = 1.0 - f32::EPSILON; // 1 - 2^-23
    let out = records(&run(Builtin::Affine { a, b: -1.0 }, &[rec(0, 0, v)]));
    assert_eq!(out[0].1.value.to_bits(), 0.0f32.to_bits());
    assert_ne!(a.mul_add(v, -1.0).to_bits(), 0.0f32.to_bits());
}

#[test]
fn filter_is_half_open_and_drops_nan() {
    let b = Builtin::Filter { lo: 1.0, hi: 2.0 };
    let inputs = [
        rec(0, 0, 0.5),
        rec(0, 1, 1.0),
        rec(0, 2, 1.5),
        rec(0, 3, 2.0),
        rec(0, 4, f32::NAN),
    ];
    let out = records(&run(b, &inputs));
    assert_eq!(out, [(0, inputs[1]), (0, inputs[2])]);
}

#[test]
fn window_emits_full_windows_only() {
    let b = Builtin::Window { size: 3 };
    let inputs = [
        rec(0, 10, 1.0),
        rec(0, 11, -2.0),
        rec(0, 12, 4.5),
        rec(0, 13, 0.25),
        rec(0, 14, 8.0),
        rec(0, 15, -1.0),
        rec(0, 16, 100.0), // a partial window: never emitted
    ];
    let out = run(b, &inputs);
    let aggs: Vec<Aggregate> = out
        .iter()
        .map(|(p, bytes)| {
            assert_eq!(*p, 0);
            bytemuck::pod_read_unaligned(bytes)
        })
        .collect();
    assert_eq!(
        aggs,
        [
            Aggregate {
                window: 0,
                count: 3,
                sum: 3.5,
                min: -2.0,
                max: 4.5,
                first_seq: 10,
                last_seq: 12,
                reserved: 0
            },
            Aggregate {
                window: 1,
                count: 3,
                sum: 7.25,
                min: -1.0,
                max: 8.0,
                first_seq: 13,
                last_seq: 15,
                reserved: 0
            },
        ]
    );
}

#[test]
fn window_sums_in_arrival_order() {
    // (2^24 + 1) + 1 rounds twice to 2^24; 1 + 1 + 2^24 would give 2^24 + 2.
    let big = 16_777_216.0f32;
    let out = run(
        Builtin::Window { size: 3 },
        &[rec(0, 0, big), rec(0, 1, 1.0), rec(0, 2, 1.0)],
    );
    let agg: Aggregate = bytemuck::pod_read_unaligned(&out[0].1);
    assert_eq!(agg.sum.to_bits(), big.to_bits());
}

#[test]
fn histogram_bins_edges_nan_and_out_of_range() {
    let b = Builtin::Histogram {
        bins: 4,
        lo: 0.0,
        hi: 8.0,
        every: 4,
    };
    assert_eq!(b.params()[4], 0.5f32.to_bits());
    let values = [
        -1.0,          // below lo: bin 0
        f32::NAN,      // bin 0
        0.0,           // bin 0
        1.999,         // bin 0
        2.0,           // bin 1
        5.5,           // bin 2
        7.999,         // bin 3
        8.0,           // >= hi: last bin
        1e30,          // last bin
        f32::INFINITY, // last bin
        -0.0,          // bin 0
        6.0,           // bin 3
    ];
    let inputs: Vec<Record> = (0..).zip(values).map(|(s, v)| rec(0, s, v)).collect();
    let out = run(b, &inputs);
    let hists: Vec<Histogram> = out
        .iter()
        .map(|(p, bytes)| {
            assert_eq!(*p, 0);
            bytemuck::pod_read_unaligned(bytes)
        })
        .collect();
    let h = |total, c: [u32; 4]| Histogram {
        total,
        bins: 4,
        counts: [c[0], c[1], c[2], c[3], 0, 0, 0, 0],
    };
    assert_eq!(
        hists,
        [h(4, [4, 0, 0, 0]), h(8, [4, 1, 1, 2]), h(12, [5, 1, 1, 5])]
    );
}

#[test]
fn scatter_routes_by_key() {
    let inputs = [
        rec(0, 0, 1.0),
        rec(5, 1, 2.0),
        rec(7, 2, 3.0),
        rec(3, 3, 4.0),
    ];
    let out = records(&run(Builtin::Scatter { ports: 3 }, &inputs));
    assert_eq!(
        out,
        [
            (0, inputs[0]),
            (2, inputs[1]),
            (1, inputs[2]),
            (0, inputs[3])
        ]
    );
}

#[test]
fn gather_forwards_to_port_zero() {
    let inputs = [rec(9, 0, 1.0), rec(4, 1, f32::NAN)];
    let out = run(Builtin::Gather, &inputs);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(p, _)| *p == 0));
    assert_eq!(out[1].1, bytemuck::bytes_of(&inputs[1]));
}

#[test]
fn longer_slots_are_fine_and_short_ones_refused() {
    let mut slot = [0u8; 48];
    slot[..16].copy_from_slice(bytemuck::bytes_of(&rec(1, 1, 3.0)));
    let mut r = Builtin::Gather.reference();
    let mut n = 0;
    r.handle(&slot, &mut |_, bytes| {
        assert_eq!(bytes.len(), 16);
        n += 1;
    })
    .unwrap();
    assert_eq!(n, 1);
    let err = r
        .handle(&slot[..8], &mut |_, _| panic!("no emit"))
        .unwrap_err();
    assert_eq!(err.code(), ERR_INPUT);
}

#[test]
fn invalid_params_are_refused_like_the_device() {
    for b in [
        Builtin::Echo { bytes: 0 },
        Builtin::Window { size: 0 },
        Builtin::Histogram {
            bins: 9,
            lo: 0.0,
            hi: 1.0,
            every: 1,
        },
        Builtin::Histogram {
            bins: 2,
            lo: 0.0,
            hi: 1.0,
            every: 0,
        },
        Builtin::Histogram {
            bins: 2,
            lo: 1.0,
            hi: 1.0,
            every: 1,
        },
        Builtin::Scatter { ports: 0 },
        Builtin::Scatter { ports: 9 },
    ] {
        assert!(b.validate().is_err(), "{b:?}");
        let err = b
            .reference()
            .handle(&[0; 64], &mut |_, _| panic!("no emit"))
            .unwrap_err();
        assert_eq!(err.code(), ERR_PARAMS, "{b:?}");
    }
    assert!(Builtin::Filter { lo: 2.0, hi: 1.0 }.validate().is_err());
    assert!(Builtin::Affine {
        a: f32::NAN,
        b: 0.0
    }
    .validate()
    .is_err());
    assert!(Builtin::Histogram {
        bins: 8,
        lo: -3e38,
        hi: 3e38,
        every: 1
    }
    .validate()
    .is_err());
}

#[test]
fn descriptions_agree() {
    let all = [
        Builtin::Echo { bytes: 24 },
        Builtin::Affine { a: 1.0, b: 0.0 },
        Builtin::Filter { lo: 0.0, hi: 1.0 },
        Builtin::Window { size: 4 },
        Builtin::Histogram {
            bins: 8,
            lo: 0.0,
            hi: 1.0,
            every: 16,
        },
        Builtin::Scatter { ports: 4 },
        Builtin::Gather,
    ];
    for b in all {
        b.validate().unwrap();
        assert_eq!(b.cuda_function(), format!("gyre_builtin_{}", b.name()));
        assert_eq!(b.state_bytes() != 0, b.sequential(), "{b:?}");
    }
    assert_eq!(all[0].input_bytes(), 24);
    assert_eq!(all[3].output_bytes(), 32);
    assert_eq!(all[4].output_bytes(), 40);
    assert_eq!(all[5].ports(), 4);
}
