//! [`Runtime`]: the backend, and the kernels launched on it.

use std::sync::Arc;
use std::time::Duration;

use gyre_runtime::backend::seam::cpu::{
    Budget, CpuBackend, CpuKernel, CpuRoute, KeptMessage, KernelConfig, LaunchError,
};
use gyre_runtime::lifecycle;

pub use crate::backend::Backend;
use crate::backing::{Backing, DeviceCore};
use crate::device::Place;
use crate::report::{KernelShutdown, RawMessage, ShutdownReport};
pub(crate) use crate::services::Services;
use crate::spec::{split, KernelSpec, Message};
use crate::{Error, Kernel};

mod builder;
pub use builder::RuntimeBuilder;

/// The gyre runtime: launches kernels and shuts them down.
///
/// Shut it down with [`Runtime::shutdown`] to get a report of everything its kernels did
/// not deliver. Dropping it instead stops it the same way, with the command timeout as the
/// timeout, and never loses a message silently: handles that outlive it keep what their
/// kernel emitted receivable, `drain` and `terminate` on them return a report with what
/// the kernel did not deliver (not an error), and sends fail with [`Error::RuntimeGone`]
/// handing the message back. What kernels that no handle holds did not deliver is logged
/// as a warning with its count. Both return in bounded time whatever a handler does.
///
/// ```
/// use gyre::{Error, KernelSpec, Runtime};
///
/// let runtime = Runtime::builder().build()?;
/// let echo = runtime.launch(KernelSpec::<u64, u64>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))?;
/// echo.send(1)?; // queued: the kernel is not active yet
/// drop(runtime); // drains it: the message is processed
/// assert_eq!(echo.recv()?, 1);
/// let refused = echo.send(2).unwrap_err();
/// assert!(matches!(refused.error, Error::RuntimeGone { .. }));
/// assert_eq!(refused.message, 2); // handed back
/// # Ok::<(), gyre::Error>(())
/// ```
///
/// ```
/// use gyre::{Backend, KernelSpec, Runtime};
/// use std::time::Duration;
///
/// let runtime = Runtime::builder().backend(Backend::Cpu).workers(2).build()?;
/// let echo = runtime.launch(KernelSpec::<u64, u64>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))?;
/// echo.activate()?;
/// echo.send(7)?;
/// assert_eq!(echo.recv()?, 7);
/// let report = runtime.shutdown(Duration::from_secs(5));
/// assert_eq!(report.undelivered_count(), 0);
/// # Ok::<(), gyre::Error>(())
/// ```
#[derive(Debug)]
pub struct Runtime {
    cpu: Arc<CpuBackend>,
    /// The CPU backend and the device groups, for runtime-wide services.
    services: Arc<Services>,
    /// Where groups run unless they say otherwise.
    place: Place,
    /// Devices of its backend groups asked for besides the default one.
    other_devices: crate::backend::OtherDevices,
    /// Set once `shutdown` stopped every kernel (the drop then has nothing to do).
    stopped: bool,
    pub(crate) command_timeout: Duration,
    backend_name: &'static str,
}

impl Runtime {
    /// A builder with defaults: [`Backend::Auto`], one worker per core.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            backend: Backend::Auto,
            workers: None,
            command_timeout: Duration::from_secs(10),
            budget: Budget::default(),
            device: 0,
        }
    }

    /// The name of the backend the runtime was built with (for [`Backend::Auto`], the one
    /// it picked): `"cpu"`, `"cuda"`, `"cuda-emulated"`, `"wgpu"` or `"wgpu-software"`.
    /// [`Runtime::launch`], [`Runtime::group`] and [`Runtime::pipeline`] run there unless a
    /// group names another backend ([`crate::GroupBuilder::backend`]).
    ///
    /// ```
    /// let runtime = gyre::Runtime::builder().backend(gyre::Backend::Cpu).build()?;
    /// assert_eq!(runtime.backend_name(), "cpu");
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Worker threads in the CPU pool.
    pub fn workers(&self) -> usize {
        self.cpu.workers()
    }

    /// Share of worker time spent running kernels since start, in `0..=1`.
    pub fn worker_utilisation(&self) -> f64 {
        self.cpu.utilisation()
    }

    /// Bytes of ring memory the runtime's kernels hold (see
    /// [`RuntimeBuilder::ring_memory_budget`]).
    pub fn ring_memory_in_use(&self) -> usize {
        self.cpu.ring_bytes_in_use()
    }

    /// The Prometheus text exposition (format 0.0.4) of the runtime and every kernel it
    /// holds: per-kernel counters read from the control blocks (`gyre_kernel_*_total`,
    /// labelled `kernel` and `id`), inbox depth and utilisation, heartbeat, state, ring
    /// memory, and runtime totals (`gyre_runtime_*`). Serve it from your own `/metrics`
    /// handler.
    ///
    /// ```
    /// let runtime = gyre::Runtime::builder().build()?;
    /// let k = runtime.launch(gyre::KernelSpec::<u32, u32>::new("echo").cpu(|x, out| Ok(out.emit(*x)?)))?;
    /// let text = runtime.prometheus_text();
    /// assert!(text.contains(r#"gyre_kernel_processed_total{kernel="echo""#));
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn prometheus_text(&self) -> String {
        self.services.prometheus_text()
    }

    /// Serves [`Runtime::prometheus_text`] at `http://ADDR/metrics` until the returned
    /// handle is dropped (feature `http`).
    ///
    /// The server is hyper on a tokio runtime of its own, on a thread of its own: it
    /// needs no tokio runtime from the caller, and may be started from inside one (either
    /// flavour) without running anything on it. It serves connections concurrently and
    /// bounds what a client can hold: see [`crate::MetricsServer`] for the header deadline,
    /// the request deadline, the header size limit and the connection limit. `GET` (or
    /// `HEAD`) `/metrics` answers 200 with `text/plain; version=0.0.4`; another method
    /// there answers 405, another path 404.
    ///
    /// The server holds what it reads, not the runtime's lifetime: after
    /// [`Runtime::shutdown`] (or a drop) it goes on serving the stopped kernels' last
    /// counters until the handle is dropped; drop it with the runtime to close the port.
    ///
    /// ```
    /// # #[cfg(feature = "http")] {
    /// let runtime = gyre::Runtime::builder().build()?;
    /// let server = runtime.serve_metrics("127.0.0.1:0".parse().unwrap())?;
    /// println!("scrape http://{}/metrics", server.local_addr());
    /// # }
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Launch`] when the address cannot be bound, or the server's runtime or
    /// thread cannot be started.
    #[cfg(feature = "http")]
    pub fn serve_metrics(&self, addr: std::net::SocketAddr) -> Result<crate::MetricsServer, Error> {
        crate::http::MetricsServer::start(crate::http::Pages::metrics(self.services.clone()), addr)
    }

    /// Serves the live dashboard at `http://ADDR/`, its JSON at `/api/snapshot` and
    /// `/api/history`, and [`Runtime::prometheus_text`] at `/metrics`, until the returned
    /// handle is dropped (feature `dashboard`).
    ///
    /// It is the server of [`Runtime::serve_metrics`] (same thread, same limits) with a
    /// sampler thread beside it that takes a snapshot of the runtime about once a second
    /// into a history of the last five minutes (300 samples; the oldest goes first).
    /// Dropping the handle stops and joins both threads. A snapshot reads what the
    /// Prometheus text reads — each kernel's control-block counters and gauges and the
    /// host's latency recorders — so sampling adds nothing to the message path.
    ///
    /// The page (no network access needed: uPlot, MIT-licensed, is embedded and served
    /// at `/uplot/`, its licence at `/uplot/LICENSE`) shows every group of every backend
    /// as its DAG with live rates on the routes, each kernel's state (coloured; a fault
    /// with its reason), and per kernel the time series of throughput, inbox depth and
    /// utilisation, stalls, errors and latency p50/p99.
    ///
    /// # `GET /api/snapshot`
    ///
    /// The runtime now, as JSON:
    ///
    /// ```json
    /// {
    ///   "seq": 42, "time_ms": 1796650000000, "interval_ms": 1000,
    ///   "runtime": { "backend": "cpu", "workers": 2, "worker_utilisation": 0.41,
    ///                "threads": 2, "kernels": 3, "dead_letters": 0 },
    ///   "groups": [ {
    ///     "name": "sensors", "backend": "cpu", "device": null, "label": "cpu",
    ///     "kernels": [ {
    ///       "name": "calibrate", "id": 0, "state": "Active", "fault": null,
    ///       "received": 120000, "processed": 120000, "emitted": 120000,
    ///       "stalls": 3, "errors": 0,
    ///       "inbox_depth": 17, "inbox_capacity": 4096, "inbox_utilisation": 0.004,
    ///       "heartbeat": 5312, "ring_bytes": 327680, "throughput": 251000.0,
    ///       "latency_samples": null, "latency_p50_ns": null, "latency_p99_ns": null,
    ///       "received_per_second": 250000.0, "processed_per_second": 250000.0,
    ///       "emitted_per_second": 250000.0, "stalls_per_second": 0.0,
    ///       "errors_per_second": 0.0
    ///     } ],
    ///     "edges": [ { "from": 0, "to": 1, "per_second": 250000.0 } ]
    ///   } ],
    ///   "relays": [ { "from": "produce", "to": "consume", "from_backend": "cpu",
    ///                 "to_backend": "wgpu", "forwarded": 5000, "per_second": 1000.0 } ]
    /// }
    /// ```
    ///
    /// - `groups`: CPU groups launched through [`Runtime::group`] or [`Runtime::pipeline`]
    ///   under their name (a CPU kernel launched alone is a group of one named after it),
    ///   then every device group in launch order. `backend` is `cpu`, `cuda`,
    ///   `cuda-emulated` or `wgpu`; `device` the device ordinal where the backend numbers
    ///   devices (CUDA), else `null`; `label` the two together (`cuda:0`).
    /// - Each kernel's counters (`received`, `processed`, `emitted`, `stalls`,
    ///   `errors`), `inbox_depth`, `inbox_capacity`, `inbox_utilisation`, `heartbeat`,
    ///   `ring_bytes`, `throughput` (processed per second over the last ten seconds) and
    ///   latency (`latency_*`, host-measured end-to-end latency in nanoseconds, `null`
    ///   until measured) are read when the request is answered: they are the values of
    ///   the `gyre_kernel_*` series of [`Runtime::prometheus_text`]. `state` is one of
    ///   `Launched`, `Active`, `Paused`, `Draining`, `Terminated`, `Faulted`; `fault` is
    ///   the reason of a `Faulted` kernel, else `null`.
    /// - The `*_per_second` rates are those of the latest sample, measured over its
    ///   `interval_ms` (`null` until two samples were taken). An edge (`from`/`to` index
    ///   the group's `kernels`) carries the downstream kernel's intake rate when it is
    ///   its only way in, else the upstream kernel's output rate when it is its only way
    ///   out, else `null` (the counters are per kernel, not per route). Edges are the
    ///   routes inside a group; a route between backends is listed under `relays`.
    /// - `relays`: routes between backends carried through the host
    ///   (`gyre_relay_forwarded_total`).
    /// - `seq` numbers the latest sample whose rates the snapshot carries.
    ///
    /// # `GET /api/history`
    ///
    /// `{"interval_ms": 1000, "capacity": 300, "samples": [SNAPSHOT, ...]}`: the samples
    /// kept, oldest first, each shaped like `/api/snapshot` and taken by the sampler;
    /// `?after=SEQ` returns only those numbered above `SEQ` (poll with the last `seq`
    /// seen).
    ///
    /// ```
    /// # #[cfg(feature = "dashboard")] {
    /// let runtime = gyre::Runtime::builder().build()?;
    /// let server = runtime.serve_dashboard("127.0.0.1:0".parse().unwrap())?;
    /// println!("dashboard at http://{}/", server.local_addr());
    /// # }
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Runtime::serve_metrics`]; also [`Error::Launch`] when the sampler thread
    /// cannot be started.
    #[cfg(feature = "dashboard")]
    pub fn serve_dashboard(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<crate::MetricsServer, Error> {
        let dashboard = Arc::new(crate::dashboard::Dashboard::new(
            self.services.clone(),
            self.backend_name,
        ));
        crate::http::MetricsServer::start(
            crate::http::Pages::dashboard(self.services.clone(), dashboard),
            addr,
        )
    }

    /// The health of every kernel the runtime holds under `policy`: the worst status and
    /// every reason (see [`crate::Kernel::health`]).
    pub fn health(
        &self,
        policy: &gyre_runtime::health::HealthPolicy,
    ) -> gyre_runtime::health::Health {
        let devices = self.services.devices();
        let device_health = devices
            .iter()
            .map(|d| crate::group::device_health(d, policy));
        crate::group::combine_health(
            self.cpu
                .kernels()
                .iter()
                .map(|k| k.health(policy))
                .chain(device_health),
        )
    }

    /// Threads the runtime runs: pool workers and live dedicated kernels.
    pub fn threads_in_use(&self) -> usize {
        self.cpu.threads_in_use()
    }

    /// Number of kernels the runtime holds (running, or stopped but still referenced).
    pub fn kernel_count(&self) -> usize {
        let devices: usize = self.services.devices().iter().map(|d| d.names.len()).sum();
        self.cpu.kernels().len() + devices
    }

    /// The registry every runtime-wide service reads.
    pub(crate) fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Where a group asking for `backend` (the runtime's when `None`) runs: the
    /// runtime's own backend, the CPU, or another device backend, opened at its first
    /// group and kept (a runtime can run groups on the CPU, a CUDA device and a wgpu
    /// adapter at once).
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when that backend cannot run here (the reason says
    /// why, as for [`crate::RuntimeBuilder::build`]).
    pub(crate) fn place(&self, backend: Option<Backend>) -> Result<Place, Error> {
        let Some(backend) = backend else {
            return Ok(self.place.clone());
        };
        if matches!(backend, Backend::Cpu) {
            return Ok(Place::Cpu);
        }
        let wanted = backend.name();
        let here = self.place.name();
        let matches = match backend {
            Backend::Cuda | Backend::CudaEmulated | Backend::Wgpu => wanted == here,
            Backend::WgpuSoftware => here == "wgpu",
            Backend::Auto | Backend::Cpu => true,
        };
        if matches {
            Ok(self.place.clone())
        } else {
            self.other_devices.backend(backend)
        }
    }

    /// Where a group asking for `backend` (the runtime's when `None`) and device
    /// `device` (the backend's default when `None`) runs.
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the runtime has no such backend or the backend
    /// no such device.
    pub(crate) fn place_on(
        &self,
        backend: Option<Backend>,
        device: Option<u32>,
    ) -> Result<Place, Error> {
        let place = self.place(backend)?;
        match device {
            None => Ok(place),
            Some(ordinal) => self.other_devices.place_on(place, ordinal),
        }
    }

    /// Keeps a launched device group in the registry (shutdown, health, metrics, dead
    /// letters).
    pub(crate) fn register(&self, core: Arc<DeviceCore>) {
        crate::device_supervisor::Restartable::attach(&core, &self.services.supervisor);
        self.services.devices.lock().push(core);
    }

    /// Launches a kernel: it becomes resident in state `Launched` and queues messages
    /// until [`Kernel::activate`].
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`], [`Error::MessageAlignment`] or [`Error::Layout`] for a
    /// spec whose message types or rings are invalid; [`Error::NoImplementation`] when
    /// the spec has no implementation for the backend.
    pub fn launch<In: Message, Out: Message>(
        &self,
        spec: KernelSpec<In, Out>,
    ) -> Result<Kernel<In, Out>, Error> {
        if matches!(self.place, Place::Cpu) {
            return Ok(Kernel::over(Backing::Cpu(self.launch_cpu(spec)?)));
        }
        // On a device backend a kernel launched alone is a group of one.
        let mut group = self.group(spec.name.clone());
        let stage = group.add(spec);
        group.launch()?.kernel(stage)
    }

    /// Launches `spec` on the CPU backend.
    pub(crate) fn launch_cpu<In: Message, Out: Message>(
        &self,
        mut spec: KernelSpec<In, Out>,
    ) -> Result<CpuKernel, Error> {
        if let (Some(builtin), true) = (spec.device.builtin, spec.device.cpu_is_builtin) {
            // The same checks as on a device: its parameters, and types that hold what it
            // reads and are what it emits.
            crate::gpu_common::builtin_payloads::<In, Out>(&spec.name, &builtin, "gyre::builtins")?;
        }
        let (inbox, outbox) = spec.layouts()?;
        let handler = spec.take_cpu_handler().ok_or_else(|| {
            crate::device::no_implementation(
                &spec.name,
                "cpu",
                "`.cpu(closure)`, `.cpu_factory(..)` or `.builtin(..)`",
            )
        })?;
        let config = KernelConfig {
            name: spec.name,
            inbox,
            outbox,
            ports: spec.ports,
            placement: spec.placement,
            quantum: spec.quantum,
            command_timeout: self.command_timeout,
            fault_policy: spec.fault_policy,
            watchdog: spec.watchdog,
            handler_factory: spec.factory.take(),
        };
        self.cpu.launch(config, handler).map_err(|e| match e {
            LaunchError::RingMemoryBudget { .. } | LaunchError::ThreadBudget { .. } => {
                Error::OverBudget(e.to_string())
            }
            other => Error::Launch(other.to_string()),
        })
    }

    /// A builder for a group of kernels routed to each other, launched together (see
    /// [`crate::Group`]). Launching one kernel with [`Runtime::launch`] is a group of one.
    pub fn group(&self, name: impl Into<String>) -> crate::GroupBuilder<'_> {
        crate::GroupBuilder::new(self, name.into())
    }

    /// A builder for a linear pipeline: each stage's output routed to the next stage's
    /// inbox, the last stage's output to the host (see [`crate::Pipeline`]).
    pub fn pipeline<In: Message>(
        &self,
        name: impl Into<String>,
    ) -> crate::PipelineBuilder<'_, In, In> {
        crate::PipelineBuilder::new(self, name.into())
    }

    /// Routes output port `port` of an already launched kernel `from` to the inbox of
    /// kernel `to`, replacing what the port was bound to. Messages the port stashed
    /// (waiting for room) go to the new target, in order.
    ///
    /// Between two CPU kernels the route is direct. Between kernels of different backends
    /// (a CPU kernel and a device group, or two device groups, on one device or on two
    /// devices of one backend: see [`crate::GroupBuilder::device`]) it is **relayed
    /// through the host**: a relay thread takes `from`'s host output (so `from.recv()` answers
    /// [`Error::ReceiverTaken`]) and sends everything into `to` with blocking
    /// backpressure; `port` must be 0 (the port bound to the host output). Relayed
    /// messages are counted in `gyre_relay_forwarded_total` (labels `from`, `to`,
    /// `from_backend`, `to_backend`, and `from_device`/`to_device` for a CUDA end).
    /// [`Runtime::shutdown`] drains
    /// a relay's upstream first and lets it deliver before draining its downstream;
    /// whatever a relay could not deliver comes back in the report (an entry named
    /// `relay FROM → TO`). Prefer declaring routes in a [`crate::GroupBuilder`]: topology
    /// (cycles) is checked there, and on a device the route stays on the device.
    ///
    /// # Errors
    /// [`Error::Route`] when the port does not exist, `to` is stopped, or its slots are too
    /// small for `from`'s messages.
    pub fn connect<A: Message, B: Message, C: Message>(
        &self,
        from: &Kernel<A, B>,
        port: u32,
        to: &Kernel<B, C>,
    ) -> Result<(), Error> {
        let (Backing::Cpu(from_core), Backing::Cpu(to_core)) = (&from.backing, &to.backing) else {
            if port != 0 {
                return Err(Error::Unsupported {
                    what: format!(
                        "relaying port {port} of kernel `{}` to kernel `{}`",
                        from.name(),
                        to.name()
                    ),
                    backend: if from.backend() == "cpu" {
                        to.backend()
                    } else {
                        from.backend()
                    },
                    advice: "a route between backends relays the upstream kernel's host \
                             output, where port 0 goes: emit what should cross on port 0, \
                             or route inside one group"
                        .to_owned(),
                });
            }
            let relay = crate::relay::Relay::start(
                from.backing.clone(),
                to.backing.clone(),
                std::mem::size_of::<B>(),
            )?;
            self.services.relays.lock().push(relay);
            return Ok(());
        };
        from_core
            .bind(
                port,
                CpuRoute::Kernel(to_core.clone()),
                std::mem::size_of::<B>(),
                false,
            )
            .map_err(Error::Route)
    }

    /// The CPU backend, for a group's restart (which must not keep the runtime alive).
    pub(crate) fn cpu_backend(&self) -> std::sync::Weak<CpuBackend> {
        Arc::downgrade(&self.cpu)
    }

    /// Restarts a terminated or faulted kernel with its configuration, handler and
    /// routes; it comes back in state `Launched` (activate it). A faulted kernel keeps
    /// the messages still queued in its inbox, and the message its handler panicked on
    /// goes to the dead letters with the fault as reason. A spec built with
    /// [`KernelSpec::cpu_factory`] gets a fresh handler; one built with `cpu` keeps its
    /// handler value (state kept in the closure carries over).
    ///
    /// A kernel of a device group restarts with its whole group, which comes back active
    /// with every queued message handed back to it (see [`crate::Group::restart`]).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when the kernel (on a device: its group) is running;
    /// [`Error::Unresponsive`] when a handler abandoned by a terminate still has not
    /// returned; on a device, the launch's errors when the fresh group does not launch.
    pub fn restart<In: Message, Out: Message>(
        &self,
        kernel: &Kernel<In, Out>,
    ) -> Result<(), Error> {
        let core = match &kernel.backing {
            Backing::Cpu(core) => core,
            // A device group restarts as a unit (see `Group::restart`).
            Backing::Device(d) => return crate::device_supervisor::restart(&d.group),
        };
        self.cpu
            .restart(core)
            .map_err(|e| Error::from_command(kernel.name(), e))
    }

    /// Takes every dead letter kept so far: messages a handler failed on (with its
    /// error), messages emitted to a port bound to the dead-letter sink, and emits that
    /// found their downstream kernel stopped. Oldest first.
    pub fn take_dead_letters(&self) -> Vec<gyre_runtime::routing::DeadLetter> {
        let mut letters = self.cpu.dead_letters().take();
        for device in self.services.devices() {
            letters.extend(device.group.take_dead_letters());
        }
        letters
    }

    /// Dead letters ever kept (taken or not).
    pub fn dead_letter_total(&self) -> u64 {
        self.services.dead_letter_total()
    }

    /// Drains every running kernel upstream first, sharing `timeout`, then stops the
    /// runtime's threads. Kernels that do not finish in time are terminated; everything
    /// they did not deliver is in the report. A faulted kernel is terminated: its entry
    /// carries its fault and hands back its undelivered messages (see [`Group::drain`]).
    /// Kernels no handle holds any more are covered too: what they emitted to the host
    /// and nobody can receive now is in their entry's `undelivered_outputs`.
    ///
    /// Returns within `timeout` plus about two seconds whatever a handler does: a handler
    /// that does not return is abandoned (its kernel's entry says so and hands back the
    /// message in hand), and its thread is left behind.
    ///
    /// Handles that outlive the runtime keep what their kernel emitted receivable; sends
    /// fail with [`Error::RuntimeGone`], handing the message back.
    ///
    /// [`Group::drain`]: crate::Group::drain
    pub fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        let stopped = self.stop_all(timeout);
        self.stopped = true;
        ShutdownReport {
            kernels: stopped.into_iter().map(|s| s.entry).collect(),
        }
    }

    /// Tells every kernel that the runtime is stopping: from here on a refused send (and,
    /// on a device, a receive past the last output) says the runtime is going, not that
    /// the kernel drains, whose advice (a restart) cannot work any more.
    fn announce_stop(&self) {
        for kernel in self.cpu.kernels_in_drain_order() {
            kernel.mark_runtime_stopping();
        }
        for device in self.services.devices() {
            // Relaxed: a flag that only chooses the words of later errors.
            device
                .runtime_gone
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// What `shutdown` and the drop do: drains every kernel (upstream first, sharing
    /// `timeout`), stops the threads, stops from the host what could not be stopped
    /// while they ran, hands back the host outputs of kernels no handle holds, and marks
    /// every kernel as belonging to a gone runtime. Returns an entry for each kernel
    /// that was still running or handed something back, in the order stopped.
    fn stop_all(&self, timeout: Duration) -> Vec<Stopped> {
        use crate::stop::{raw, stop_kernel, Stop};
        let deadline = std::time::Instant::now() + timeout;
        self.announce_stop();
        // Routes between backends: a device group feeding a relay drains first and its
        // relay delivers, before the CPU kernels (which such relays feed) drain.
        let relays = self.services.relays.lock().clone();
        // No fault policy may restart a device group behind the shutdown's back.
        self.services.supervisor.stop(
            deadline.min(std::time::Instant::now() + crate::device_supervisor::JOIN_PATIENCE),
        );
        let early = Self::stop_relay_sources(&relays, deadline);
        // No fault policy may restart a kernel behind the shutdown's back.
        self.cpu.stop_supervision();
        let kernels = self.cpu.kernels_in_drain_order();
        crate::stop::activate_for_drain(kernels.iter());
        let mut stopped: Vec<(usize, KernelShutdown)> = kernels
            .iter()
            .enumerate()
            .filter_map(|(i, k)| stop_kernel(k, Stop::Drain(deadline)).map(|entry| (i, entry)))
            .collect();
        self.cpu.stop_threads();
        // A kernel that did not acknowledge while no handler of it ran was waiting for a
        // worker; with the threads stopped, the host carries its terminate out itself.
        for (i, entry) in &mut stopped {
            let kernel = &kernels[*i];
            let retry = kernel.is_uncollected()
                || (entry.error.is_some() && !lifecycle::is_stopped(kernel.state()));
            if !retry {
                continue;
            }
            if let Some(again) = stop_kernel(kernel, Stop::Terminate) {
                entry.undelivered.extend(again.undelivered);
                entry.undelivered_outputs.extend(again.undelivered_outputs);
                entry.abandoned |= again.abandoned;
                entry.error = again.error;
                entry.final_state = again.final_state;
                entry.fault = again.fault;
            }
        }
        // Who still holds each kernel besides the runtime's list and `kernels`: ports of
        // other kernels (left bound only where a stuck handler holds the kernel), the
        // thread left inside an abandoned handler, and otherwise its handles.
        let route_refs = route_references(&kernels);
        let has_handle: Vec<bool> = kernels
            .iter()
            .map(|k| {
                let others = 2
                    + route_refs.get(&k.kernel_id()).copied().unwrap_or(0)
                    + usize::from(k.is_abandoned());
                k.handle_count() > others
            })
            .collect();
        // What kernels without handles emitted to the host: nobody can receive it now.
        for (i, kernel) in kernels.iter().enumerate() {
            if has_handle[i] {
                continue;
            }
            let mut outputs = Vec::new();
            if kernel.take_unreceived_outputs(&mut |s| outputs.push(raw(s))) == 0 {
                continue;
            }
            if let Some((_, entry)) = stopped.iter_mut().find(|(k, _)| *k == i) {
                entry.undelivered_outputs.extend(outputs);
            } else {
                stopped.push((
                    i,
                    KernelShutdown {
                        kernel: kernel.name().to_owned(),
                        processed: kernel.counters().processed,
                        timed_out: false,
                        final_state: kernel.state(),
                        fault: kernel.fault(),
                        error: None,
                        abandoned: kernel.is_abandoned(),
                        undelivered: Vec::new(),
                        undelivered_outputs: outputs,
                    },
                ));
            }
        }
        for kernel in &kernels {
            kernel.mark_runtime_gone();
        }
        let mut all = early;
        all.extend(stopped.into_iter().map(|(i, entry)| Stopped {
            kernel: Some(kernels[i].clone()),
            has_handle: has_handle[i],
            entry,
        }));
        // Relays out of CPU kernels deliver what their (now stopped) upstream emitted
        // before the device groups they feed drain.
        for relay in &relays {
            relay.finish_by(deadline);
        }
        for device in self.services.devices() {
            all.extend(Self::stop_device(&device, deadline));
        }
        all.extend(
            relays
                .iter()
                .filter_map(|r| r.report())
                .map(|entry| Stopped {
                    kernel: None,
                    has_handle: true,
                    entry,
                }),
        );
        all
    }

    /// Drains every device group that feeds a relay and lets the relay deliver (before
    /// the CPU kernels it feeds drain). Upstream first, whatever order the relays were
    /// connected in: a group is drained once no relay still to finish feeds it, so what
    /// a chain of device groups (on several devices) carries reaches its end.
    fn stop_relay_sources(
        relays: &[Arc<crate::relay::Relay>],
        deadline: std::time::Instant,
    ) -> Vec<Stopped> {
        let source = |relay: &crate::relay::Relay| match &relay.from_backing {
            Backing::Device(d) => Some(d.group.clone()),
            Backing::Cpu(_) => None,
        };
        let mut pending: Vec<_> = relays
            .iter()
            .filter_map(|r| Some((r, source(r)?)))
            .collect();
        let mut stopped = Vec::new();
        while !pending.is_empty() {
            let fed = |group: &Arc<DeviceCore>| {
                pending.iter().any(|(r, _)| {
                    matches!(&r.to_backing, Backing::Device(d) if Arc::ptr_eq(&d.group, group))
                })
            };
            // In a cycle of relays every group is fed: take any.
            let next = pending.iter().position(|(_, g)| !fed(g)).unwrap_or(0);
            let (relay, group) = pending.remove(next);
            stopped.extend(Self::stop_device(&group, deadline));
            relay.finish_by(deadline);
        }
        stopped
    }

    /// Drains `device` if it is still running (until `deadline`) and reports each of its
    /// kernels; a group no handle holds also hands back the outputs nobody can receive
    /// now.
    fn stop_device(device: &Arc<DeviceCore>, deadline: std::time::Instant) -> Vec<Stopped> {
        use crate::stop::Stop;
        if device.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        // The registry's reference and the caller's are all that hold a group no handle
        // (and no relay) holds.
        let has_handle = Arc::strong_count(device) > 2;
        let report = crate::group::device_stop(device, Stop::Drain(deadline));
        let mut stopped = Vec::new();
        for mut entry in report.kernels {
            // Kernels terminated before have no entry: find each entry's kernel.
            let k = device.names.iter().position(|n| *n == entry.kernel);
            if let (false, Some(k)) = (has_handle, k) {
                while let Ok(Some(m)) = device.try_recv_with(k, |p, corr| RawMessage {
                    corr: crate::spec::join(corr),
                    bytes: p.to_vec(),
                }) {
                    entry.undelivered_outputs.push(m);
                }
            }
            stopped.push(Stopped {
                kernel: None,
                has_handle,
                entry,
            });
        }
        stopped
    }
}

/// One kernel a runtime's stop handled.
struct Stopped {
    /// The CPU kernel (`None` for a kernel of a device group).
    kernel: Option<CpuKernel>,
    /// Whether a handle still holds the kernel (so it can take what is kept for it).
    has_handle: bool,
    entry: KernelShutdown,
}

/// How many ports of `kernels` route to each kernel id (each holds a reference to it).
fn route_references(kernels: &[CpuKernel]) -> std::collections::HashMap<u32, usize> {
    let mut refs = std::collections::HashMap::new();
    for kernel in kernels {
        for to in kernel.routes().into_iter().flatten() {
            *refs.entry(to).or_insert(0) += 1;
        }
    }
    refs
}

impl Drop for Runtime {
    /// Stops the runtime as [`Runtime::shutdown`] does, with the command timeout as its
    /// timeout. Nothing is lost silently: what a kernel emitted stays receivable through
    /// its surviving handles, and what it did not deliver is kept for them (a `drain` or
    /// `terminate` on a handle hands it back). What kernels that no handle holds did not
    /// deliver cannot reach anyone: it is logged as a warning with its count (call
    /// `shutdown` to get it in a report instead).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Nobody can receive while this thread drops the runtime, so a kernel whose host
        // output is full would hold its drain until the timeout and keep its inputs for
        // handles that may not be able to take them (a `Receiver`): what it emits
        // overflows into a queue its handles receive after the ring instead, as a
        // device group's host outputs do, and its drain goes on.
        for kernel in self.cpu.kernels_in_drain_order() {
            kernel.overflow_host_output();
        }
        let mut kept = 0usize;
        let mut lost = 0usize;
        for Stopped {
            kernel,
            has_handle,
            entry,
        } in self.stop_all(self.command_timeout)
        {
            let count = entry.undelivered.len() + entry.undelivered_outputs.len();
            if count == 0 {
                continue;
            }
            if let (true, Some(kernel)) = (has_handle, kernel) {
                let keep = |m: RawMessage| KeptMessage {
                    corr: split(m.corr),
                    payload: m.bytes,
                };
                kernel.keep_for_handles(
                    entry.undelivered.into_iter().map(keep).collect(),
                    entry.undelivered_outputs.into_iter().map(keep).collect(),
                );
                kept += count;
            } else {
                tracing::warn!(
                    kernel = %entry.kernel,
                    messages = count,
                    "runtime dropped: kernel `{}` had {count} undelivered messages and no \
                     handle left to take them; they are lost (call Runtime::shutdown to get \
                     them in a report)",
                    entry.kernel
                );
                lost += count;
            }
        }
        if kept > 0 {
            tracing::info!(
                messages = kept,
                "runtime dropped: {kept} undelivered messages are kept for the kernels'                  handles (drain or terminate a handle to take them back)"
            );
        }
        if lost > 0 {
            tracing::warn!(messages = lost, "runtime dropped with {lost} messages lost");
        }
    }
}
