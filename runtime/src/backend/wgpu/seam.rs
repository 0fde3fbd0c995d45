//! The wgpu group behind the backend seam ([`crate::backend::seam::DeviceGroup`]).

use std::time::Duration;

use crate::abi::{Command, State};
use crate::backend::group::{GroupReport, SendError};
use crate::backend::seam::{Capabilities, DeviceGroup, OnOutput, Watch};
use crate::backend::CommandError;
use crate::health::{Health, HealthPolicy};
use crate::metrics::KernelSample;
use crate::routing::DeadLetter;
use crate::wait::Signal;

use super::group::WgpuGroup;

impl DeviceGroup for WgpuGroup {
    fn backend(&self) -> &'static str {
        "wgpu"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::DEVICE_GROUP
    }

    fn kernel_id(&self, k: usize) -> u32 {
        WgpuGroup::kernel_id(self, k)
    }

    fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError> {
        WgpuGroup::try_send(self, k, payload, corr)
    }

    fn try_recv_with(&self, k: usize, f: &mut OnOutput<'_>) -> bool {
        WgpuGroup::try_recv_with(self, k, |tag, corr, payload| f(tag, corr, payload)).is_some()
    }

    fn progress(&self) -> &Signal {
        self.ticked()
    }

    fn watch(&self) -> Watch<'_> {
        // The ticker notifies after every tick: nothing to watch.
        Watch::not_needed()
    }

    fn state(&self, k: usize) -> State {
        WgpuGroup::state(self, k)
    }

    fn fault(&self) -> Option<String> {
        WgpuGroup::fault(self)
    }

    fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        WgpuGroup::command(self, k, command)
    }

    fn drain(&self, timeout: Duration) -> GroupReport {
        WgpuGroup::drain(self, timeout)
    }

    fn terminate(&self) -> GroupReport {
        WgpuGroup::terminate(self)
    }

    fn sample(&self, k: usize) -> KernelSample {
        WgpuGroup::sample(self, k)
    }

    fn health(&self, k: usize, policy: &HealthPolicy) -> Health {
        WgpuGroup::health(self, k, policy)
    }

    fn take_dead_letters(&self) -> Vec<DeadLetter> {
        WgpuGroup::take_dead_letters(self)
    }
}
