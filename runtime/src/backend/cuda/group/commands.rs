//! Lifecycle commands to the kernels of a CUDA group and waiting for their acknowledgement.

use std::time::Instant;

use crate::abi::{Command, State};
use crate::backend::group::{issue_command, reported_fault};
use crate::backend::CommandError;
use crate::lifecycle::{self, Event};
use crate::wait::Backoff;

use super::{pause, CudaGroup};

impl CudaGroup {
    /// Issues `command` to kernel `k` and waits for its acknowledgement.
    ///
    /// # Errors
    /// [`CommandError::Lifecycle`] for a transition the state machine refuses,
    /// [`CommandError::Unresponsive`] after the command timeout, [`CommandError::Faulted`]
    /// when the group faulted.
    pub fn command(&self, k: usize, command: Command) -> Result<State, CommandError> {
        self.command_until(k, command, Instant::now() + self.command_timeout)
    }

    /// [`CudaGroup::command`], waiting for the acknowledgement until `deadline`.
    pub(super) fn command_until(
        &self,
        k: usize,
        command: Command,
        deadline: Instant,
    ) -> Result<State, CommandError> {
        let kernel = &self.kernels[k];
        let _serial = kernel.commands.lock();
        let epoch = self.issue(k, command)?;
        let mut backoff = Backoff::new();
        loop {
            if let Some(state) = self.answered(k, command, epoch)? {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                return Err(CommandError::Unresponsive {
                    name: kernel.plan.name.clone(),
                    waited: self.command_timeout,
                });
            }
            // Keep outputs flowing while waiting: a kernel may be finishing a batch
            // whose emits wait for room downstream, down to a host outbox.
            self.pump_all();
            pause(&mut backoff);
        }
    }

    /// Writes `command` to kernel `k`'s control block (the caller holds its command
    /// lock) and returns its epoch; a drain or terminate first closes the host inbox.
    pub(super) fn issue(&self, k: usize, command: Command) -> Result<u32, CommandError> {
        let kernel = &self.kernels[k];
        issue_command(
            &kernel.plan.name,
            self.fault(),
            &kernel.control,
            &kernel.inbox,
            command,
        )
    }

    /// Whether kernel `k` answered `command`, issued with `epoch`: its state once it
    /// acknowledged, or once it stopped for good without reading the command (a kernel
    /// that finished its drain exits, and acknowledges nothing after); `None` while
    /// waiting.
    pub(super) fn answered(
        &self,
        k: usize,
        command: Command,
        epoch: u32,
    ) -> Result<Option<State>, CommandError> {
        let kernel = &self.kernels[k];
        if kernel.control.acknowledged(epoch) {
            let state = kernel.control.state();
            if state == State::Faulted {
                return Err(reported_fault(&kernel.plan.name, &kernel.control));
            }
            // A drain is acknowledged as Draining, then as Terminated.
            return Ok(Some(state));
        }
        if let Some(reason) = self.fault() {
            return Err(CommandError::Faulted {
                name: kernel.plan.name.clone(),
                reason,
            });
        }
        let state = kernel.control.state();
        match state {
            State::Faulted => Err(reported_fault(&kernel.plan.name, &kernel.control)),
            // The kernel exited before it read the command (it finished its drain): a
            // drain or terminate is done; any other command is refused.
            State::Terminated => match command {
                Command::Drain | Command::Terminate => Ok(Some(state)),
                _ => lifecycle::transition(state, Event::Command(command))
                    .map(|_| Some(state))
                    .map_err(CommandError::from),
            },
            _ => Ok(None),
        }
    }

    /// Activates every kernel, downstream first.
    ///
    /// # Errors
    /// The first command that failed.
    pub fn activate_all(&self) -> Result<(), CommandError> {
        for &k in self.order.iter().rev() {
            self.command(k, Command::Activate)?;
        }
        Ok(())
    }
}
