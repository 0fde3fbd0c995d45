//! What every GPU backend's groups share: where ports go, messages read back from rings,
//! why a send failed, and the report of a stopped group. Plain data, no backend code: the
//! CUDA and wgpu backends both use these, and neither depends on the other.

use crate::abi::{State, TAG_KIND_MASK, TAG_SENDER_SHIFT};
use crate::control::Counters;

/// Where a port's messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The kernel's host outbox, which the host receives from.
    Host,
    /// Kernel `i` of the group, through a ring in device memory.
    Kernel(usize),
    /// The group's dead letters, which the host takes.
    DeadLetters,
}

/// A route from a kernel's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the emitting kernel.
    pub from: usize,
    /// Its port.
    pub port: u32,
    /// Where the port's messages go.
    pub to: Target,
}

/// Why a send did not go through; the message is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The inbox is full.
    #[error("kernel `{kernel}`'s inbox is full: retry, or raise its capacity")]
    Full {
        /// The kernel.
        kernel: String,
    },
    /// The kernel no longer takes messages (draining, terminated or faulted).
    #[error("kernel `{kernel}` takes no more messages: it is draining or stopped")]
    Closed {
        /// The kernel.
        kernel: String,
    },
    /// The message does not fit the inbox slot.
    #[error("a {bytes}-byte message does not fit kernel `{kernel}`'s {room}-byte slot payload: raise its slot size")]
    TooLarge {
        /// The kernel.
        kernel: String,
        /// The message's size.
        bytes: usize,
        /// The slot payload.
        room: u32,
    },
    /// The group faulted.
    #[error("group faulted: {0}")]
    Faulted(String),
}

/// A message read back from a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Kind (low 16 bits) and sender id (high 16 bits).
    pub tag: u32,
    /// Correlation id.
    pub corr: [u32; 2],
    /// The slot's payload (the message is at its start).
    pub payload: Vec<u8>,
}

impl Message {
    /// The message kind.
    pub fn kind(&self) -> u32 {
        self.tag & TAG_KIND_MASK
    }

    /// The sending kernel's id.
    pub fn sender(&self) -> u32 {
        self.tag >> TAG_SENDER_SHIFT
    }

    /// A copy of the message in `slot`.
    pub fn of_slot(slot: &crate::ring::SlotRef<'_>) -> Self {
        Self {
            tag: slot.tag,
            corr: slot.corr,
            payload: slot.payload.to_vec(),
        }
    }
}

/// What one kernel left when its group stopped.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// The kernel.
    pub name: String,
    /// Its final state.
    pub state: State,
    /// Its counters, widened.
    pub counters: Counters<u64>,
    /// Messages that reached it and were never handled: its host inbox and every ring
    /// from an upstream kernel, oldest first per ring.
    pub undelivered: Vec<Message>,
    /// Outputs it made but could not deliver (a terminate while it waited for room),
    /// with their port.
    pub undelivered_outputs: Vec<(u32, Message)>,
}

impl KernelReport {
    /// The report of kernel `name`, stopped in `state` with `counters`, nothing
    /// undelivered (yet).
    pub fn new(name: &str, state: State, counters: Counters<u64>) -> Self {
        Self {
            name: name.to_owned(),
            state,
            counters,
            undelivered: Vec::new(),
            undelivered_outputs: Vec::new(),
        }
    }
}

/// Reads back what a stopped device kernel left in its host inbox (`inbox`, the
/// producer side): every message from the kernel's final head on, oldest first, into
/// `undelivered`. Closes the inbox if it is not closed yet.
///
/// # Safety
/// The inbox's consumer (the kernel on the device, or whoever plays it on the host)
/// releases no position any more, for as long as this runs
/// ([`Producer::read_closed`](crate::ring::Producer::read_closed)).
pub unsafe fn read_back_inbox<M: crate::ring::RingMemory>(
    inbox: &crate::ring::Producer<M>,
    undelivered: &mut Vec<Message>,
) {
    // ORDERING: Acquire pairs with the consumer's Release store of head.
    let head = inbox
        .memory()
        .head()
        .load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: the caller guarantees the consumer releases nothing more.
    unsafe {
        inbox.read_closed(head, |slot| undelivered.push(Message::of_slot(&slot)));
    }
}

/// Issues `command` to a device kernel (`name`, the host side of its control block
/// `control`, its host inbox `inbox`) and returns the command's epoch: refused when the
/// group faulted (`fault`) or the kernel's state does not allow it. A drain or terminate
/// first closes the host inbox and waits until every claim that raced the close is
/// published (as a message or cancelled), so the kernel sees nothing new after it reads
/// the command.
///
/// # Errors
/// [`CommandError::Faulted`](crate::backend::CommandError::Faulted) or
/// [`CommandError::Lifecycle`](crate::backend::CommandError::Lifecycle).
pub fn issue_command<C: crate::control::ControlMemory, M: crate::ring::RingMemory>(
    name: &str,
    fault: Option<String>,
    control: &crate::control::HostSide<C>,
    inbox: &crate::ring::Producer<M>,
    command: crate::abi::Command,
) -> Result<u32, crate::backend::CommandError> {
    use crate::abi::Command;
    use crate::lifecycle::{transition, Event};
    if let Some(reason) = fault {
        return Err(crate::backend::CommandError::Faulted {
            name: name.to_owned(),
            reason,
        });
    }
    transition(control.state(), Event::Command(command))?;
    if command == Command::Drain || command == Command::Terminate {
        let tail = inbox.close();
        inbox.wait_published(tail, u32::MAX);
    }
    Ok(control.issue(command))
}

/// The error for a device kernel (`name`, its control block's host side `control`)
/// whose state says it faulted: the fault code it reported.
pub fn reported_fault<C: crate::control::ControlMemory>(
    name: &str,
    control: &crate::control::HostSide<C>,
) -> crate::backend::CommandError {
    crate::backend::CommandError::Faulted {
        name: name.to_owned(),
        reason: format!(
            "the kernel reported fault code {}",
            control.status().error_code
        ),
    }
}

/// What a drain or terminate of a group did.
#[derive(Clone, Debug)]
pub struct GroupReport {
    /// One report per kernel, in plan order.
    pub kernels: Vec<KernelReport>,
    /// Whether a drain ran out of time (the rest was terminated).
    pub timed_out: bool,
    /// The device error that ended the group, if one did.
    pub fault: Option<String>,
}

impl GroupReport {
    /// Every undelivered message and output of every kernel.
    pub fn undelivered_count(&self) -> usize {
        self.kernels
            .iter()
            .map(|k| k.undelivered.len() + k.undelivered_outputs.len())
            .sum()
    }
}

/// Most output ports, and most inbox rings (the host's and one per route), of a kernel
/// of a GPU group.
pub const MAX_LINKS: usize = 8;

/// The checked shape of a group: where each port of each kernel goes, the
/// kernel-to-kernel edges `(from, to)` (one per route, in route order), and an order in
/// which every kernel comes after the kernels that feed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// `targets[k][p]`: where port `p` of kernel `k` goes (the host unless routed).
    pub targets: Vec<Vec<Target>>,
    /// Kernel-to-kernel edges, one per route to a kernel.
    pub edges: Vec<(usize, usize)>,
    /// Kernels, upstream first.
    pub order: Vec<usize>,
}

/// Checks the topology of a GPU group whose kernels are `(name, ports)`: names are
/// unique, a kernel has 1 to [`MAX_LINKS`] ports and at most [`MAX_LINKS`] inbox rings, every route leaves an
/// existing port of an existing kernel, routes each port once, ends at an existing kernel,
/// and the routes form no cycle (`cycle_advice` says what to do instead). The error says
/// what to change.
///
/// # Errors
/// The first problem found, as a sentence.
pub fn check_topology(
    kernels: &[(&str, u32)],
    routes: &[Route],
    cycle_advice: &str,
) -> Result<Topology, String> {
    let n = kernels.len();
    for (i, &(name, ports)) in kernels.iter().enumerate() {
        if kernels[..i].iter().any(|&(other, _)| other == name) {
            return Err(format!("two kernels are named `{name}`: rename one"));
        }
        if ports == 0 || ports as usize > MAX_LINKS {
            return Err(format!(
                "kernel `{name}` has {ports} ports but a kernel has 1 to {MAX_LINKS}: set \
                 `.ports(n)` in that range, and fan out further through another stage"
            ));
        }
    }
    let mut targets: Vec<Vec<Target>> = kernels
        .iter()
        .map(|&(_, ports)| vec![Target::Host; ports as usize])
        .collect();
    let mut routed: Vec<Vec<bool>> = kernels
        .iter()
        .map(|&(_, ports)| vec![false; ports as usize])
        .collect();
    let mut edges = Vec::new();
    for r in routes {
        let &(name, ports) = kernels.get(r.from).ok_or_else(|| {
            format!(
                "a route starts at kernel #{} but the group has {n} kernel(s): route only \
                     between kernels added to this group",
                r.from
            )
        })?;
        if r.port >= ports {
            return Err(format!(
                "kernel `{name}` has no port {} (it has {ports}): use a port below {ports}, or \
                 give it more ports (`.ports(n)`)",
                r.port
            ));
        }
        if std::mem::replace(&mut routed[r.from][r.port as usize], true) {
            return Err(format!(
                "port {} of kernel `{name}` is routed twice but a port has one target: remove one \
                 of the routes, or emit to several ports",
                r.port
            ));
        }
        if let Target::Kernel(to) = r.to {
            if to >= n {
                return Err(format!(
                    "a route ends at kernel #{to} but the group has {n} kernel(s): route only \
                     between kernels added to this group"
                ));
            }
            edges.push((r.from, to));
        }
        targets[r.from][r.port as usize] = r.to;
    }
    let order = crate::routing::topological_order(n, &edges).map_err(|cycle| {
        let names: Vec<&str> = cycle.iter().map(|&i| kernels[i].0).collect();
        format!(
            "routes form a cycle through {}: {cycle_advice}",
            names.join(" → ")
        )
    })?;
    for (i, &(name, _)) in kernels.iter().enumerate() {
        let inboxes = 1 + edges.iter().filter(|&&(_, to)| to == i).count();
        if inboxes > MAX_LINKS {
            return Err(format!(
                "kernel `{name}` has {inboxes} inbox rings but a kernel has at most {MAX_LINKS} \
                 (the host's and one per route into it): route fewer kernels into it, gathering \
                 some through another stage first"
            ));
        }
    }
    Ok(Topology {
        targets,
        edges,
        order,
    })
}

/// Sends one message from the host into a kernel's host inbox (`inbox`, the producer
/// side; `kernel` names the kernel in errors): refuses a message larger than a slot's
/// payload, claims a slot, writes the host's tag, `corr` and the payload (the rest of the
/// payload zeroed), publishes. The same for every GPU backend: what differs is what the
/// backend does after (wake a ticker) or on a full ring (check for a fault).
///
/// # Errors
/// [`SendError::TooLarge`], [`SendError::Full`] or [`SendError::Closed`].
pub fn host_send<M: crate::ring::RingMemory>(
    inbox: &crate::ring::Producer<M>,
    kernel: &str,
    payload: &[u8],
    corr: [u32; 2],
) -> Result<(), SendError> {
    use crate::abi::{HOST_SENDER_ID, KIND_MESSAGE, SLOT_HEADER_BYTES};
    use crate::ring::ClaimError;
    let room = inbox.memory().slot_bytes() - SLOT_HEADER_BYTES;
    if payload.len() > room as usize {
        return Err(SendError::TooLarge {
            kernel: kernel.to_owned(),
            bytes: payload.len(),
            room,
        });
    }
    match inbox.try_claim(1) {
        Ok(claim) => {
            let tag = (HOST_SENDER_ID << TAG_SENDER_SHIFT) | KIND_MESSAGE;
            claim.write(0, tag, corr, |slot| {
                slot[..payload.len()].copy_from_slice(payload);
                slot[payload.len()..].fill(0);
            });
            claim.publish();
            Ok(())
        }
        Err(ClaimError::Full { .. } | ClaimError::TooMany) => Err(SendError::Full {
            kernel: kernel.to_owned(),
        }),
        Err(ClaimError::Closed) => Err(SendError::Closed {
            kernel: kernel.to_owned(),
        }),
    }
}

/// What the host measures of a device kernel that the device cannot: its throughput
/// (from the `processed` counter over host time) and its watchdog (the heartbeat compared
/// between two health checks). One per kernel of a device group.
#[derive(Debug)]
pub struct HostMeasures {
    watchdog: parking_lot::Mutex<Option<crate::health::Watchdog>>,
    throughput: crate::metrics::ThroughputWindow,
}

impl Default for HostMeasures {
    fn default() -> Self {
        Self {
            watchdog: parking_lot::Mutex::new(None),
            throughput: crate::metrics::ThroughputWindow::new(std::time::Instant::now()),
        }
    }
}

/// Where a device kernel's sample comes from: what only its backend knows.
#[derive(Clone, Copy, Debug)]
pub struct SampleOf<'a> {
    /// The kernel's name.
    pub name: &'a str,
    /// The backend's label.
    pub backend: &'static str,
    /// The kernel's id.
    pub id: u32,
    /// Its state, as the backend reports it (`Faulted` once the group faulted).
    pub state: State,
    /// Messages in its host inbox.
    pub depth: u32,
    /// Slots of its host inbox.
    pub capacity: u32,
    /// Bytes of its host inbox ring.
    pub ring_bytes: usize,
}

impl HostMeasures {
    /// A sample of a device kernel whose control block is `control`: counters and
    /// heartbeat from the block, throughput measured here, no handler time (a device has
    /// no clock words in the block: the series is absent, never a zero).
    pub fn sample<M: crate::control::ControlMemory>(
        &self,
        of: SampleOf<'_>,
        control: &crate::control::HostSide<M>,
    ) -> crate::metrics::KernelSample {
        let counters = control.counters();
        crate::metrics::KernelSample {
            name: of.name.to_owned(),
            backend: of.backend,
            device: None,
            id: of.id,
            state: of.state,
            inbox_depth: of.depth,
            inbox_capacity: of.capacity,
            inbox_utilisation: f64::from(of.depth) / f64::from(of.capacity),
            heartbeat: control.status().heartbeat,
            ring_bytes: of.ring_bytes,
            busy_ns: None,
            throughput: self
                .throughput
                .rate(std::time::Instant::now(), counters.processed),
            latency: None,
            counters,
        }
    }

    /// The kernel's health from `sample`, the same evaluation as every backend.
    pub fn health(
        &self,
        sample: &crate::metrics::KernelSample,
        policy: &crate::health::HealthPolicy,
    ) -> crate::health::Health {
        let now = std::time::Instant::now();
        let mut watchdog = self.watchdog.lock();
        let watchdog = watchdog.get_or_insert_with(|| crate::health::Watchdog::new(sample, now));
        crate::health::evaluate(sample, policy, watchdog, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(from: usize, port: u32, to: Target) -> Route {
        Route { from, port, to }
    }

    #[test]
    fn a_chain_is_ordered_and_unrouted_ports_go_to_the_host() {
        let t = check_topology(
            &[("c", 1), ("a", 2), ("b", 1)],
            &[
                route(1, 0, Target::Kernel(2)),
                route(2, 0, Target::Kernel(0)),
            ],
            "",
        )
        .unwrap();
        assert_eq!(t.order, [1, 2, 0]);
        assert_eq!(t.edges, [(1, 2), (2, 0)]);
        assert_eq!(t.targets[1], [Target::Kernel(2), Target::Host]);
    }

    /// Kernels `(name, ports)`, routes, and a piece of the expected error.
    type Case<'a> = (&'a [(&'a str, u32)], Vec<Route>, &'a str);

    #[test]
    fn every_bad_topology_says_what_to_change() {
        let cases: [Case<'_>; 7] = [
            (&[("a", 1), ("a", 1)], vec![], "two kernels are named `a`"),
            (&[("a", 9)], vec![], "has 9 ports but a kernel has 1 to 8"),
            (&[("a", 0)], vec![], "has 0 ports but a kernel has 1 to 8"),
            (
                &[("a", 1)],
                vec![route(0, 1, Target::Host)],
                "has no port 1",
            ),
            (
                &[("a", 1)],
                vec![route(0, 0, Target::Host), route(0, 0, Target::DeadLetters)],
                "routed twice",
            ),
            (
                &[("a", 1)],
                vec![route(0, 0, Target::Kernel(3))],
                "ends at kernel #3 but the group has 1 kernel(s)",
            ),
            (
                &[("a", 1), ("b", 1)],
                vec![
                    route(0, 0, Target::Kernel(1)),
                    route(1, 0, Target::Kernel(0)),
                ],
                "cycle through",
            ),
        ];
        for (kernels, routes, expected) in cases {
            let err = check_topology(kernels, &routes, "use the CPU backend").unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
