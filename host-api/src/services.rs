//! The registry of the backend seam: what runtime-wide services (shutdown, health,
//! Prometheus, `/metrics`, dead letters) see of every backend.

use std::sync::Arc;

use gyre_runtime::backend::seam::cpu::CpuBackend;

use crate::backing::DeviceCore;

/// What the runtime-wide services see: the CPU backend and every device group the
/// runtime launched (the registry of the backend seam).
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) cpu: Arc<CpuBackend>,
    pub(crate) devices: parking_lot::Mutex<Vec<Arc<DeviceCore>>>,
    /// Routes between backends, carried through the host.
    pub(crate) relays: parking_lot::Mutex<Vec<Arc<crate::relay::Relay>>>,
    /// The CPU groups launched through a [`crate::GroupBuilder`]: each one's name and its
    /// kernels' ids, in launch order (what the dashboard groups CPU kernels by; a CPU
    /// kernel launched alone is a group of one). Entries whose kernels are all gone are
    /// dropped when the dashboard looks.
    pub(crate) cpu_groups: parking_lot::Mutex<Vec<(String, Vec<u32>)>>,
    /// The device groups' watchdogs and fault policies.
    pub(crate) supervisor: crate::device_supervisor::Supervisor,
}

impl Services {
    /// Every device group, in launch order.
    pub(crate) fn devices(&self) -> Vec<Arc<DeviceCore>> {
        self.devices.lock().clone()
    }

    /// Dead letters ever kept by the device groups.
    fn device_dead_letter_total(&self) -> u64 {
        self.devices()
            .iter()
            .map(|d| d.group.dead_letter_total())
            .sum()
    }

    /// Dead letters ever kept, on every backend.
    pub(crate) fn dead_letter_total(&self) -> u64 {
        self.cpu.dead_letters().total() + self.device_dead_letter_total()
    }

    /// The Prometheus text of every kernel of every backend, labelled with its backend.
    pub(crate) fn prometheus_text(&self) -> String {
        use std::fmt::Write as _;
        let samples = self
            .devices()
            .iter()
            .flat_map(|d| {
                (0..d.names.len())
                    .map(|k| {
                        let mut sample = d.group.sample(k);
                        sample.latency = d.latency[k].summary();
                        sample
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut text = self
            .cpu
            .prometheus_text_with(samples, self.device_dead_letter_total());
        let relays = self.relays.lock().clone();
        if !relays.is_empty() {
            text.push_str(
                "# HELP gyre_relay_forwarded_total Messages a route between backends carried \
                 through the host.\n# TYPE gyre_relay_forwarded_total counter\n",
            );
            for r in relays {
                // The devices, where the backend numbers them: a route between two
                // devices of one backend is relayed too.
                let device = |label: &str, d: Option<u32>| {
                    d.map_or_else(String::new, |d| format!(",{label}=\"{d}\""))
                };
                let _ = writeln!(
                    text,
                    "gyre_relay_forwarded_total{{from=\"{}\",to=\"{}\",from_backend=\"{}\",to_backend=\"{}\"{}{}}} {}",
                    r.from,
                    r.to,
                    r.from_backing.backend(),
                    r.to_backing.backend(),
                    device("from_device", r.from_backing.device()),
                    device("to_device", r.to_backing.device()),
                    r.forwarded()
                );
            }
        }
        text
    }
}
