//! The single-producer inbox lane and the token that owns it.

use std::sync::Arc;

use super::host_io::host_header;
use super::{KernelCore, SendFailure};
use crate::ring::ClaimError;
use crate::sync::Ordering;

/// The exclusive right to send through a kernel's single-producer lane: a second inbox
/// ring that, having one producer, is claimed with plain stores instead of a
/// compare-and-swap. At most one exists per kernel; dropping it frees the lane.
#[derive(Debug)]
pub struct ExclusiveLane {
    core: Arc<KernelCore>,
}

impl ExclusiveLane {
    pub(super) fn new(core: Arc<KernelCore>) -> Self {
        Self { core }
    }

    /// Writes one message into the lane in place, without waiting.
    ///
    /// # Errors
    /// As [`KernelCore::try_send`].
    #[inline]
    pub fn try_send(&mut self, corr: [u32; 2], payload: &[u8]) -> Result<(), SendFailure> {
        let core = &self.core;
        let max = core.config.inbox.payload_bytes() as usize;
        if payload.len() > max {
            return Err(SendFailure::TooLarge {
                len: payload.len(),
                max,
            });
        }
        // SAFETY: this value is the only `ExclusiveLane` of the kernel (`take_lane` hands
        // out one until it is dropped) and `&mut self` keeps its use on one thread, so no
        // other claim on the lane runs concurrently; `close` may, which the push handles.
        let pushed = unsafe {
            core.lane
                .push_exclusive_at(|p| host_header(p, corr), payload)
        };
        match pushed {
            Ok(()) => {
                core.wake();
                Ok(())
            }
            Err(ClaimError::Full { .. }) => Err(SendFailure::Full),
            Err(ClaimError::Closed) => Err(SendFailure::Closed(core.closed_state())),
            Err(ClaimError::TooMany) => unreachable!("the payload size was checked"),
        }
    }
}

impl ExclusiveLane {
    /// Writes up to `want` messages into the lane with one claim, one publish and one
    /// wake, without waiting.
    ///
    /// # Errors
    /// As [`KernelCore::try_send_batch`].
    #[inline]
    pub fn try_send_batch(
        &mut self,
        want: u32,
        bytes: usize,
        fill: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<u32, SendFailure> {
        let core = &self.core;
        // SAFETY: as in `try_send`: this is the lane's only `ExclusiveLane`, used from one
        // thread through `&mut self`, so no other claim on the lane runs concurrently.
        core.send_batch_through(&core.lane, want, bytes, fill, |n| unsafe {
            core.lane.try_claim_exclusive(n)
        })
    }
}

impl Drop for ExclusiveLane {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire swap in `take_lane`.
        self.core.lane_taken.store(false, Ordering::Release);
    }
}
