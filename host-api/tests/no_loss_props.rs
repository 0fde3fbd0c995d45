//! Property: whatever a user does to a set of kernels, every message sent is received
//! exactly once or handed back (by the failed send, or in a drain/terminate report).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use gyre::{Error, Kernel, KernelSpec, Placement, Runtime, State};
use proptest::prelude::*;

const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::builder().workers(2).build().unwrap())
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        kernel: usize,
        count: u8,
        exclusive: bool,
    },
    Recv {
        kernel: usize,
        count: u8,
    },
    Activate(usize),
    Deactivate(usize),
    Drain(usize),
    Terminate(usize),
}

fn op(kernels: usize) -> impl Strategy<Value = Op> {
    let k = 0..kernels;
    prop_oneof![
        4 => (k.clone(), 1..40u8, any::<bool>())
            .prop_map(|(kernel, count, exclusive)| Op::Send { kernel, count, exclusive }),
        3 => (k.clone(), 1..40u8).prop_map(|(kernel, count)| Op::Recv { kernel, count }),
        2 => k.clone().prop_map(Op::Activate),
        1 => k.clone().prop_map(Op::Deactivate),
        1 => k.clone().prop_map(Op::Drain),
        1 => k.prop_map(Op::Terminate),
    ]
}

#[derive(Clone, Debug)]
struct KernelPlan {
    dedicated: bool,
    capacity_log2: u32,
    output_log2: u32,
    /// Messages whose id modulo this is zero make the handler panic (0: never).
    poison_every: u64,
}

fn plan() -> impl Strategy<Value = KernelPlan> {
    (
        any::<bool>(),
        2..7u32,
        2..7u32,
        prop_oneof![3 => Just(0u64), 1 => 20..60u64],
    )
        .prop_map(
            |(dedicated, capacity_log2, output_log2, poison_every)| KernelPlan {
                dedicated,
                capacity_log2,
                output_log2,
                poison_every,
            },
        )
}

/// Where each message id ended up.
#[derive(Default)]
struct Ledger {
    accepted: Vec<u64>,
    outcomes: HashMap<u64, Vec<&'static str>>,
}

impl Ledger {
    fn record(&mut self, id: u64, how: &'static str) {
        self.outcomes.entry(id).or_default().push(how);
    }
}

fn receive_some(kernel: &Kernel<u64, u64>, count: usize, ledger: &mut Ledger) {
    for _ in 0..count {
        match kernel.try_recv() {
            Ok(Some(id)) => ledger.record(id, "received"),
            Ok(None) | Err(_) => break,
        }
    }
}

fn absorb(report: gyre::Report<u64, u64>, ledger: &mut Ledger) {
    for id in report.undelivered {
        ledger.record(id, "returned input");
    }
    for id in report.undelivered_outputs {
        ledger.record(id, "returned output");
    }
}

fn run(plans: &[KernelPlan], ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = runtime();
    let kernels: Vec<Kernel<u64, u64>> = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let poison = plan.poison_every;
            let spec = KernelSpec::<u64, u64>::new(format!("k{i}"))
                .capacity(1 << plan.capacity_log2)
                .host_output(1 << plan.output_log2)
                .placement(if plan.dedicated {
                    Placement::Dedicated
                } else {
                    Placement::Pool
                })
                .quantum(8)
                .cpu(move |id, out| {
                    assert!(poison == 0 || id % poison != 0, "poisoned message {id}");
                    Ok(out.emit(*id)?)
                });
            rt.launch(spec).unwrap()
        })
        .collect();
    let mut lanes: Vec<gyre::ExclusiveSender<u64>> = kernels
        .iter()
        .map(|k| k.exclusive_sender().unwrap())
        .collect();
    let mut ledger = Ledger::default();
    let mut next_id = 1u64;
    for op in ops {
        match *op {
            Op::Send {
                kernel,
                count,
                exclusive,
            } => {
                for _ in 0..count {
                    let id = next_id;
                    next_id += 1;
                    let sent = if exclusive {
                        lanes[kernel].try_send(id)
                    } else {
                        kernels[kernel].try_send(id)
                    };
                    match sent {
                        Ok(()) => ledger.accepted.push(id),
                        Err(e) => {
                            prop_assert_eq!(e.message, id, "the failed message comes back");
                            ledger.accepted.push(id);
                            ledger.record(id, "send failed");
                        }
                    }
                }
            }
            Op::Recv { kernel, count } => receive_some(&kernels[kernel], count.into(), &mut ledger),
            Op::Activate(k) => drop(kernels[k].activate()),
            Op::Deactivate(k) => drop(kernels[k].deactivate()),
            Op::Drain(k) => {
                // A drain needs room for outputs: receive while it runs.
                let kernel = kernels[k].clone();
                let drainer = std::thread::spawn(move || kernel.drain(WAIT));
                while !drainer.is_finished() {
                    receive_some(&kernels[k], 64, &mut ledger);
                    std::thread::yield_now();
                }
                if let Ok(report) = drainer.join().unwrap() {
                    prop_assert!(!report.timed_out, "drain of {} timed out", report.kernel);
                    absorb(report, &mut ledger);
                }
            }
            Op::Terminate(k) => {
                if let Ok(report) = kernels[k].terminate() {
                    absorb(report, &mut ledger);
                }
            }
        }
    }
    // Wind down: terminate whatever still runs, then receive what drains left behind.
    for kernel in &kernels {
        if kernel.state() != State::Terminated {
            absorb(kernel.terminate().unwrap(), &mut ledger);
        }
        loop {
            match kernel.try_recv() {
                Ok(Some(id)) => ledger.record(id, "received"),
                Ok(None) => prop_assert!(false, "a terminated kernel still looks live"),
                Err(Error::Terminated { .. } | Error::Faulted { .. }) => break,
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
    for id in &ledger.accepted {
        let outcomes = ledger.outcomes.get(id).cloned().unwrap_or_default();
        prop_assert_eq!(outcomes.len(), 1, "message {} ended as {:?}", id, outcomes);
    }
    prop_assert_eq!(
        ledger.outcomes.len(),
        ledger.accepted.len(),
        "no message appears that was never sent"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_message_is_received_once_or_handed_back(
        plans in prop::collection::vec(plan(), 1..4),
        ops in prop::collection::vec(op(3), 1..40),
    ) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Send { kernel, count, exclusive } => {
                    Op::Send { kernel: kernel % plans.len(), count, exclusive }
                }
                Op::Recv { kernel, count } => Op::Recv { kernel: kernel % plans.len(), count },
                Op::Activate(k) => Op::Activate(k % plans.len()),
                Op::Deactivate(k) => Op::Deactivate(k % plans.len()),
                Op::Drain(k) => Op::Drain(k % plans.len()),
                Op::Terminate(k) => Op::Terminate(k % plans.len()),
            })
            .collect();
        run(&plans, &ops)?;
    }
}
