//! The CUDA group behind the backend seam ([`crate::backend::seam::DeviceGroup`]).

use std::sync::Arc;
use std::time::Duration;

use crate::abi::{Command, State};
use crate::backend::group::{GroupReport, Message, SendError};
use crate::backend::seam::{Capabilities, DeviceGroup, OnOutput, Watch, Watcher};
use crate::backend::CommandError;
use crate::health::{Health, HealthPolicy};
use crate::metrics::KernelSample;
use crate::routing::DeadLetter;
use crate::wait::Signal;

use super::group::CudaGroup;

/// A launched [`CudaGroup`] with its watcher thread: a persistent grid writes mapped
/// host memory and raises no interrupt, so while someone waits on the group a thread
/// polls its rings' cursors and states and notifies [`DeviceGroup::progress`] when they
/// change (see [`Watcher`]); with nobody waiting the thread parks.
pub struct WatchedCudaGroup {
    group: Arc<CudaGroup>,
    watcher: Arc<Watcher>,
    progress: Arc<Signal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WatchedCudaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.group.fmt(f)
    }
}

impl WatchedCudaGroup {
    /// Starts the watcher thread of `group`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn new(group: CudaGroup) -> std::io::Result<Self> {
        let group = Arc::new(group);
        let watcher = Arc::new(Watcher::new());
        let progress = Arc::new(Signal::new());
        let thread = std::thread::Builder::new()
            .name(format!("gyre-cuda-watch-{}", group.name()))
            .spawn({
                let (group, watcher, progress) = (group.clone(), watcher.clone(), progress.clone());
                move || watcher.run(&progress, || group.fingerprint())
            })?;
        Ok(Self {
            group,
            watcher,
            progress,
            thread: Some(thread),
        })
    }

    /// The group.
    pub fn group(&self) -> &CudaGroup {
        &self.group
    }
}

impl std::ops::Deref for WatchedCudaGroup {
    type Target = CudaGroup;

    fn deref(&self) -> &CudaGroup {
        &self.group
    }
}

impl WatchedCudaGroup {
    /// Waits up to `timeout` for one output of kernel `k` (on the progress signal, the
    /// group watched meanwhile).
    ///
    /// # Errors
    /// A message saying it timed out, or the device error.
    pub fn recv_timeout(&self, k: usize, timeout: Duration) -> Result<Message, String> {
        let _watch = self.watcher.watch();
        let deadline = std::time::Instant::now() + timeout;
        self.progress
            .wait_until(Some(deadline), || match self.group.try_recv(k) {
                Ok(None) => None,
                other => Some(other),
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "timed out after {timeout:?} waiting for an output of kernel #{k}"
                ))
            })
            .and_then(|m| m.ok_or_else(|| "no output".to_owned()))
    }
}

impl Drop for WatchedCudaGroup {
    fn drop(&mut self) {
        self.watcher.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl DeviceGroup for WatchedCudaGroup {
    fn backend(&self) -> &'static str {
        if self.group.device().is_emulated() {
            "cuda-emulated"
        } else {
            "cuda"
        }
    }

    fn device(&self) -> Option<u32> {
        Some(self.group.device().ordinal())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::DEVICE_GROUP
    }

    fn kernel_id(&self, k: usize) -> u32 {
        self.group.kernel_id(k)
    }

    fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError> {
        self.group.try_send(k, payload, corr)
    }

    fn try_recv_with(&self, k: usize, f: &mut OnOutput<'_>) -> bool {
        self.group
            .try_recv_with(k, |tag, corr, payload| f(tag, corr, payload))
            .is_some()
    }

    fn progress(&self) -> &Signal {
        &self.progress
    }

    fn watch(&self) -> Watch<'_> {
        self.watcher.watch()
    }

    fn state(&self, k: usize) -> State {
        self.group.state(k)
    }

    fn fault(&self) -> Option<String> {
        self.group.fault()
    }

    fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        self.group.command(k, command)
    }

    fn drain(&self, timeout: Duration) -> GroupReport {
        let report = self.group.drain(timeout);
        self.progress.notify();
        report
    }

    fn terminate(&self) -> GroupReport {
        let report = self.group.terminate();
        self.progress.notify();
        report
    }

    fn sample(&self, k: usize) -> KernelSample {
        self.group.sample(k)
    }

    fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        self.group.health(k, policy)
    }

    fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.group.take_dead_letters()
    }
}
