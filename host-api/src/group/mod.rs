//! Groups and pipelines: kernels routed to each other, launched and stopped as a unit.
//!
//! A *group* declares its kernels and the routes between their output ports and inboxes,
//! and is launched as a whole; launching one kernel with [`crate::Runtime::launch`] is a
//! group of one. On the CPU backend a route writes straight from the upstream kernel's
//! emit into the downstream kernel's inbox ring (never through a host task); on GPU
//! backends a group is what stays resident together, so routes inside it stay on the
//! device. Topology is checked at launch: unknown kernels, type and slot-size mismatches,
//! cycles (unless [`GroupBuilder::allow_cycles`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::seam::cpu::CpuKernel;
use gyre_runtime::routing::RouteError;

use crate::backing::{Backing, DeviceCore, DeviceKernel};
use crate::report::{GroupReport, KernelShutdown, RawMessage};
use crate::spec::join;
use crate::stop::{stop_kernels, Stop};
use crate::{Error, Kernel};

mod builder;
pub(crate) use builder::PortTo;
pub use builder::{GroupBuilder, Stage};

/// Kernels launched together with their routes (see [`GroupBuilder`]), on any backend.
#[derive(Debug)]
pub struct Group {
    name: String,
    /// The id of the builder that launched it: the one its stages carry.
    builder: u64,
    inner: Inner,
}

/// What a group is on its backend.
#[derive(Debug)]
enum Inner {
    /// CPU kernels bound to each other's inboxes.
    Cpu {
        kernels: Vec<CpuKernel>,
        edges: Vec<(usize, usize)>,
        /// Upstream first.
        order: Vec<usize>,
        cyclic: bool,
        /// The runtime's CPU backend, to restart members on (weak: a group does not keep
        /// its runtime alive).
        backend: std::sync::Weak<gyre_runtime::backend::seam::cpu::CpuBackend>,
    },
    /// One group on a device backend.
    Device(Arc<DeviceCore>),
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend the group runs on: `cpu`, `cuda`, `cuda-emulated` or `wgpu`.
    pub fn backend(&self) -> &'static str {
        match &self.inner {
            Inner::Cpu { .. } => "cpu",
            Inner::Device(core) => core.group.backend(),
        }
    }

    /// The ordinal of the device the group runs on, on a backend that numbers its
    /// devices (CUDA: see [`GroupBuilder::device`]); `None` on the CPU and wgpu.
    pub fn device(&self) -> Option<u32> {
        match &self.inner {
            Inner::Cpu { .. } => None,
            Inner::Device(core) => core.group.device(),
        }
    }

    /// What kernel `index` stands on.
    pub(crate) fn backing(&self, index: usize) -> Backing {
        match &self.inner {
            Inner::Cpu { kernels, .. } => Backing::Cpu(kernels[index].clone()),
            Inner::Device(core) => Backing::Device(DeviceKernel {
                group: core.clone(),
                k: index,
            }),
        }
    }

    fn len(&self) -> usize {
        match &self.inner {
            Inner::Cpu { kernels, .. } => kernels.len(),
            Inner::Device(core) => core.names.len(),
        }
    }

    fn kernel_name(&self, index: usize) -> String {
        match &self.inner {
            Inner::Cpu { kernels, .. } => kernels[index].name().to_owned(),
            Inner::Device(core) => core.names[index].clone(),
        }
    }

    fn edges_and_order(&self) -> (&[(usize, usize)], &[usize]) {
        match &self.inner {
            Inner::Cpu { edges, order, .. } => (edges, order),
            Inner::Device(core) => (&core.edges, &core.order),
        }
    }

    /// The typed handle of one kernel of the group.
    ///
    /// # Errors
    /// [`Error::ForeignStage`] when `stage` was returned by another builder than the one
    /// that launched this group.
    pub fn kernel<In, Out>(&self, stage: Stage<In, Out>) -> Result<Kernel<In, Out>, Error> {
        if stage.builder != self.builder || stage.index >= self.len() {
            return Err(Error::ForeignStage {
                group: self.name.clone(),
            });
        }
        Ok(Kernel::over(self.backing(stage.index)))
    }

    /// Names of the kernels, upstream first.
    pub fn kernel_names(&self) -> Vec<String> {
        let (_, order) = self.edges_and_order();
        order.iter().map(|&i| self.kernel_name(i)).collect()
    }

    /// Routes between kernels, as (upstream name, downstream name).
    pub fn routes(&self) -> Vec<(String, String)> {
        let (edges, _) = self.edges_and_order();
        edges
            .iter()
            .map(|&(f, t)| (self.kernel_name(f), self.kernel_name(t)))
            .collect()
    }

    /// Sends `command` to every kernel, in `order`.
    fn command_all(
        &self,
        command: Command,
        order: impl Iterator<Item = usize>,
    ) -> Result<(), Error> {
        // Every kernel gets the command, whatever an earlier one answered (a member
        // terminated on its own must not leave the others paused); the first error is
        // returned.
        let mut first = None;
        for i in order {
            let result = match &self.inner {
                Inner::Cpu { kernels, .. } => kernels[i].command(command).map(drop),
                Inner::Device(core) => core.group.command(i, command).map(drop),
            };
            if let Err(e) = result {
                first.get_or_insert_with(|| Error::from_command(&self.kernel_name(i), e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Activates every kernel, downstream first (so nothing waits on an inactive stage).
    ///
    /// # Errors
    /// The first kernel's error, as [`Kernel::activate`]; the other kernels are activated
    /// all the same.
    pub fn activate(&self) -> Result<(), Error> {
        let order = self.edges_and_order().1.to_vec();
        self.command_all(Command::Activate, order.into_iter().rev())
    }

    /// Pauses every kernel, upstream first; messages keep queuing.
    ///
    /// # Errors
    /// As [`Kernel::deactivate`].
    pub fn deactivate(&self) -> Result<(), Error> {
        let order = self.edges_and_order().1.to_vec();
        self.command_all(Command::Pause, order.into_iter())
    }

    /// Drains the group, upstream kernels first (topological order), so everything in
    /// flight reaches its final sink: each kernel refuses new messages, processes what
    /// is queued, delivers what it emitted downstream, then terminates, before the next
    /// one drains. In a group with cycles it first waits until no message is in any of
    /// its rings. Kernels that do not finish within `timeout` (shared) are terminated
    /// and what they did not deliver is in the report.
    ///
    /// A faulted member (faulted before the drain, or while it runs) is terminated: it
    /// cannot process anything more. That is not an error: its entry in the report has
    /// `error: None`, carries its `fault` (the reason; see [`GroupReport::faulted`]) and
    /// hands back its undelivered messages, the message its handler panicked on first.
    /// The other members drain as usual; what they emit toward the faulted one goes to
    /// the dead letters. What the faulted member emitted to the host before the fault
    /// stays receivable.
    ///
    /// Returns within `timeout` plus about a second whatever a handler does: a handler
    /// still running then is abandoned (its entry says so).
    ///
    /// ```
    /// use gyre::{KernelSpec, Runtime, State};
    /// use std::time::Duration;
    ///
    /// let runtime = Runtime::builder().build()?;
    /// let mut g = runtime.group("g");
    /// let front = g.add(KernelSpec::<u32, u32>::new("front").no_host_output()
    ///     .cpu(|x, out| Ok(out.emit(*x)?)));
    /// let back = g.add(KernelSpec::<u32, u32>::new("back").cpu(|x, out| {
    ///     assert!(*x != 2, "cannot take {x}");
    ///     Ok(out.emit(*x)?)
    /// }));
    /// g.route(front, 0, back);
    /// let group = g.launch()?;
    /// group.activate()?;
    /// for x in 0..4 {
    ///     group.kernel(front)?.send(x)?;
    /// }
    /// while group.kernel(back)?.state() != State::Faulted {
    ///     std::thread::yield_now();
    /// }
    /// let report = group.drain(Duration::from_secs(5));
    /// let faulted: Vec<_> = report.faulted().map(|(name, _)| name).collect();
    /// assert_eq!(faulted, ["back"]);
    /// assert!(report.kernels.iter().all(|k| k.error.is_none()));
    /// // The message `back` panicked on comes back first; what `front` emitted toward it
    /// // after the fault went to the dead letters.
    /// assert_eq!(report.undelivered_as::<u32>(&["back"])[0], 2);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// On a device backend the group drains as one unit, upstream first, within
    /// `timeout` plus the command timeout; every kernel has an entry.
    pub fn drain(&self, timeout: Duration) -> GroupReport {
        match &self.inner {
            Inner::Cpu {
                kernels,
                order,
                cyclic,
                ..
            } => {
                let deadline = Instant::now() + timeout;
                if *cyclic {
                    wait_quiet(kernels, deadline);
                }
                stop_kernels(order.iter().map(|&i| &kernels[i]), Stop::Drain(deadline))
            }
            Inner::Device(core) => device_stop(core, Stop::Drain(Instant::now() + timeout)),
        }
    }

    /// Terminates every kernel, upstream first; every message still in a ring comes back
    /// in the report (on a device backend, also what waits in host outputs no
    /// [`crate::Receiver`] holds).
    pub fn terminate(&self) -> GroupReport {
        match &self.inner {
            Inner::Cpu { kernels, order, .. } => {
                stop_kernels(order.iter().map(|&i| &kernels[i]), Stop::Terminate)
            }
            Inner::Device(core) => device_stop(core, Stop::Terminate),
        }
    }

    /// Terminates one kernel of the group by name; the others keep running (what they
    /// emit toward it from now on goes to the dead letters).
    ///
    /// # Errors
    /// [`Error::Route`] with [`RouteError::UnknownKernel`] when no kernel has that name;
    /// [`Error::Unsupported`] on a device backend, whose groups stop as a unit.
    pub fn terminate_kernel(&self, name: &str) -> Result<GroupReport, Error> {
        let index = (0..self.len())
            .find(|&i| self.kernel_name(i) == name)
            .ok_or_else(|| RouteError::UnknownKernel(name.to_owned()))?;
        match &self.inner {
            Inner::Cpu { kernels, .. } => Ok(stop_kernels(
                std::iter::once(&kernels[index]),
                Stop::Terminate,
            )),
            Inner::Device(core) => Err(Error::Unsupported {
                what: format!("terminating kernel `{name}` alone"),
                backend: core.group.backend(),
                advice: format!(
                    "group `{}` runs as one unit on the device: terminate the whole group, \
                     or run the kernel in a group of its own",
                    core.name
                ),
            }),
        }
    }

    /// The worst health of the group's kernels and every reason.
    pub fn health(&self, policy: &crate::HealthPolicy) -> crate::Health {
        match &self.inner {
            Inner::Cpu { kernels, .. } => combine_health(kernels.iter().map(|k| k.health(policy))),
            Inner::Device(core) => device_health(core, policy),
        }
    }

    /// Restarts a faulted or stopped device group, keeping its queued messages: what is
    /// left of the group is terminated, a fresh group is launched from the same plan on
    /// the same device with every kernel active, and each message that was queued for a
    /// kernel (its inbox, then what its upstream kernels had sent it) is handed to it
    /// again, in order and with its correlation id, before any new send gets in.
    /// Handles (`Kernel`, `Sender`, `Receiver`, `Requester`) keep working; outputs of
    /// the old group not yet received come first. Kernel state words start from zero, and
    /// so do the kernels' counters ([`Kernel::metrics`]; Prometheus sees a counter reset).
    /// A message the new group does not take within the command timeout, and an output
    /// the old group could not deliver, go to the dead letters. The kernels'
    /// [`Kernel::restarts`] count it. A kernel whose spec says
    /// `on_fault(FaultPolicy::Restart(..))` has its group restarted this way by the
    /// runtime's supervisor when it faults.
    ///
    /// On the CPU, every member that is faulted or terminated restarts as
    /// [`crate::Runtime::restart`] restarts a kernel (a faulted one keeps its queued
    /// messages, the message its handler panicked on goes to the dead letters), downstream
    /// first, and the group's routes stay bound; the restarted members come back active,
    /// as a device group's do. Members still running are left alone. This is how a
    /// [`crate::Pipeline`] restarts (`pipeline.group().restart()`).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when the group is running (no member faulted or stopped);
    /// on a device, the launch's errors when the fresh group does not launch (the old one
    /// stays as it was); on the CPU, the first member's restart error (members after it
    /// are not restarted) and [`Error::RuntimeGone`] once the runtime is gone.
    pub fn restart(&self) -> Result<(), Error> {
        match &self.inner {
            Inner::Device(core) => crate::device_supervisor::restart(core),
            Inner::Cpu {
                kernels,
                order,
                backend,
                ..
            } => {
                if order.is_empty() {
                    return Ok(());
                }
                let stopped: Vec<usize> = order
                    .iter()
                    .rev()
                    .copied()
                    .filter(|&i| gyre_runtime::lifecycle::is_stopped(kernels[i].state()))
                    .collect();
                let Some(backend) = backend.upgrade() else {
                    return Err(Error::RuntimeGone {
                        kernel: kernels[order[0]].name().to_owned(),
                    });
                };
                if stopped.is_empty() {
                    // Running: the first member's own refusal says so.
                    let first = &kernels[order[0]];
                    return backend
                        .restart(first)
                        .map_err(|e| Error::from_command(first.name(), e));
                }
                for &i in &stopped {
                    backend
                        .restart(&kernels[i])
                        .map_err(|e| Error::from_command(kernels[i].name(), e))?;
                }
                self.command_all(Command::Activate, stopped.into_iter())
            }
        }
    }

    /// Marks a device group faulted from the host with `reason`, as its watchdog does:
    /// its kernels read `Faulted`, sends and commands fail with the reason, its kernels'
    /// fault policy applies (`Restart` restarts it, keeping its queued messages), and a
    /// stop terminates it and hands back what it holds.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a CPU group (a CPU kernel faults when its handler
    /// panics).
    pub fn fault_with(&self, reason: &str) -> Result<(), Error> {
        match &self.inner {
            Inner::Device(core) => {
                core.group.fault_with(reason);
                if let Some(supervisor) = core.group.supervisor() {
                    supervisor.poke();
                }
                Ok(())
            }
            Inner::Cpu { .. } => Err(Error::Unsupported {
                what: format!("faulting group `{}` from the host", self.name),
                backend: "cpu",
                advice: "a CPU kernel faults when its handler panics; terminate the group \
                         to stop it"
                    .to_owned(),
            }),
        }
    }
}

/// The health of every kernel of a device group.
pub(crate) fn device_health(core: &DeviceCore, policy: &crate::HealthPolicy) -> crate::Health {
    combine_health((0..core.names.len()).map(|k| core.group.health(k, policy)))
}

/// Drains (until the deadline) or terminates a device group and reports every kernel,
/// upstream first. A terminate also hands back the host outputs no receiver holds.
pub(crate) fn device_stop(core: &DeviceCore, how: Stop) -> GroupReport {
    // As on the CPU, kernels terminated before this stop are left out: whoever stopped
    // them took their messages then (a second stop reported them again, empty).
    let before: Vec<bool> = (0..core.names.len())
        .map(|k| core.group.state(k) == State::Terminated)
        .collect();
    if before.iter().all(|&terminated| terminated) {
        core.stopped.store(true, Ordering::Relaxed);
        return GroupReport {
            kernels: Vec::new(),
        };
    }
    core.stopped.store(true, Ordering::Relaxed);
    let (report, terminate) = match how {
        Stop::Drain(deadline) => {
            // As on the CPU: a kernel left launched or paused would hold its upstream's
            // drain until the deadline, so every one of them runs while the group drains.
            for k in 0..core.names.len() {
                if matches!(core.group.state(k), State::Launched | State::Paused) {
                    // A kernel that stopped meanwhile answers an error; the drain reports it.
                    let _ = core.group.command(k, Command::Activate);
                }
            }
            (
                core.group
                    .drain(deadline.saturating_duration_since(Instant::now())),
                false,
            )
        }
        Stop::Terminate => (core.group.terminate(), true),
    };
    let raw = |m: &gyre_runtime::backend::group::Message| RawMessage {
        corr: join(m.corr),
        bytes: m.payload.clone(),
    };
    let kernels = core
        .order
        .iter()
        .filter(|&&k| !before[k])
        .map(|&k| {
            let entry = &report.kernels[k];
            let mut outputs: Vec<RawMessage> = entry
                .undelivered_outputs
                .iter()
                .map(|(_, m)| raw(m))
                .collect();
            if terminate && !core.receiver_taken[k].load(Ordering::Relaxed) {
                while let Ok(Some(m)) = core.try_recv_with(k, |p, corr| RawMessage {
                    corr: join(corr),
                    bytes: p.to_vec(),
                }) {
                    outputs.push(m);
                }
            }
            KernelShutdown {
                kernel: entry.name.clone(),
                processed: entry.counters.processed,
                timed_out: report.timed_out,
                final_state: entry.state,
                fault: (entry.state == crate::State::Faulted)
                    .then(|| core.group.fault())
                    .flatten(),
                error: None,
                abandoned: core.group.abandoned(k),
                undelivered: entry.undelivered.iter().map(raw).collect(),
                undelivered_outputs: outputs,
            }
        })
        .collect();
    GroupReport { kernels }
}

pub(crate) fn combine_health(all: impl Iterator<Item = crate::Health>) -> crate::Health {
    let mut status = crate::HealthStatus::Healthy;
    let mut reasons = Vec::new();
    let mut stalled = false;
    for health in all {
        status = status.min(health.status);
        reasons.extend(health.reasons);
        stalled |= health.stalled;
    }
    crate::Health {
        status,
        reasons,
        stalled,
    }
}

/// Waits until no kernel has a message in a ring, nor one in a handler, twice in a row.
fn wait_quiet(kernels: &[CpuKernel], deadline: Instant) {
    let quiet = || {
        kernels
            .iter()
            .all(|k| k.inbox_len() == 0 && !k.is_busy() && !k.has_stashed())
    };
    while Instant::now() < deadline {
        if quiet() {
            std::thread::sleep(Duration::from_millis(1));
            if quiet() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
