//! Stopping CPU kernels: drains and terminates that gather what they hand back into
//! report entries, for groups, pipelines and the runtime's shutdown.

use std::time::Instant;

use gyre_runtime::backend::seam::cpu::CpuKernel;
use gyre_runtime::ring::SlotRef;

use crate::report::{GroupReport, KernelShutdown, RawMessage};
use crate::spec::join;
use crate::Error;

#[derive(Clone, Copy)]
pub(crate) enum Stop {
    Drain(Instant),
    Terminate,
}

/// Drains or terminates `kernels` in the order given and gathers what they handed back.
///
/// A drain first activates every kernel left launched or paused: each is drained in its
/// turn anyway, and a paused kernel downstream would otherwise fill up and hold its
/// upstream's drain until the deadline.
pub(crate) fn stop_kernels<'a>(
    kernels: impl Iterator<Item = &'a CpuKernel>,
    how: Stop,
) -> GroupReport {
    let kernels: Vec<&CpuKernel> = kernels.collect();
    if let Stop::Drain(_) = how {
        activate_for_drain(kernels.iter().copied());
    }
    GroupReport {
        kernels: kernels
            .into_iter()
            .filter_map(|k| stop_kernel(k, how))
            .collect(),
    }
}

/// Activates every kernel of `kernels` left launched or paused, before a drain (see
/// [`stop_kernels`]).
pub(crate) fn activate_for_drain<'a>(kernels: impl Iterator<Item = &'a CpuKernel>) {
    for k in kernels {
        if matches!(k.state(), crate::State::Launched | crate::State::Paused) {
            // A kernel that stopped meanwhile answers an error: its own stop reports it.
            let _ = k.command(gyre_runtime::abi::Command::Activate);
        }
    }
}

/// A message handed back by a stop, as a report keeps it.
pub(crate) fn raw(s: SlotRef<'_>) -> RawMessage {
    RawMessage {
        corr: join(s.user_corr()),
        bytes: s.payload.to_vec(),
    }
}

/// Drains or terminates one kernel and says what it handed back; `None` when it was
/// terminated already (whoever terminated it took its messages then). A faulted kernel
/// is terminated by a drain too (see [`Group::drain`]): its entry carries the fault and
/// its undelivered messages, not an error.
pub(crate) fn stop_kernel(kernel: &CpuKernel, how: Stop) -> Option<KernelShutdown> {
    if kernel.state() == crate::State::Terminated && !kernel.is_uncollected() {
        return None;
    }
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let outcome = match how {
        Stop::Drain(deadline) => {
            kernel.drain_until(deadline, &mut |s| inputs.push(raw(s)), &mut |s| {
                outputs.push(raw(s));
            })
        }
        Stop::Terminate => kernel.terminate(&mut |s| inputs.push(raw(s)), &mut |s| {
            outputs.push(raw(s));
        }),
    };
    let (timed_out, abandoned, error) = match outcome {
        Ok(summary) => (summary.timed_out, summary.abandoned, None),
        // Terminated meanwhile (by another host thread or its fault policy), which took
        // its messages: nothing is left to report.
        Err(gyre_runtime::backend::CommandError::Lifecycle(e))
            if e.from == crate::State::Terminated =>
        {
            return None;
        }
        Err(e) => (false, false, Some(Error::from_command(kernel.name(), e))),
    };
    Some(KernelShutdown {
        kernel: kernel.name().to_owned(),
        processed: kernel.counters().processed,
        timed_out,
        final_state: kernel.state(),
        fault: kernel.fault(),
        error,
        abandoned,
        undelivered: inputs,
        undelivered_outputs: outputs,
    })
}
