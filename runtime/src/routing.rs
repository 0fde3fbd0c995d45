//! Ports, routes and topology: the backend-neutral half of routing.
//!
//! A handler emits to numbered output ports. The host binds each port to one target:
//!
//! - **the host**: the kernel's host-bound output ring, which `recv` reads;
//! - **another kernel's inbox**: kernel-to-kernel delivery (on the CPU backend the emit
//!   writes straight into the downstream ring; on GPU backends it stays on the device);
//! - **the dead-letter sink**: messages are kept, with a reason, in [`DeadLetters`].
//!
//! What a backend must provide for routing: a place per port to hold messages that
//! found their target ring full (so a producer never blocks a shared worker and never
//! drops), a way to wake a stalled producer when its target frees room (counted as
//! stalls in the control block), and delivery of whatever reaches a target that stopped
//! accepting messages to the dead-letter sink. Topology is checked here, once, for every
//! backend: [`check_acyclic`].

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::sync::{AtomicU64, Ordering};

/// A message that could not be delivered, kept with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The kernel that handled or emitted it.
    pub kernel: String,
    /// Why it is here: the handler's error, a stopped downstream, a port bound to the
    /// dead-letter sink.
    pub reason: String,
    /// Whether it is a message the kernel received (`true`: its handler failed on it) or
    /// one it emitted (`false`: it could not be delivered downstream, or went to a port
    /// bound to the sink).
    pub is_input: bool,
    /// Whether the kernel's own routing sent it here (a port bound to the dead-letter
    /// sink) rather than a failure. A request ends with `DeadLettered` only on a
    /// failure: a copy a handler routes to the sink says nothing of its reply.
    pub routed: bool,
    /// The slot tag (kind and sender id).
    pub tag: u32,
    /// The correlation id the message was sent (or emitted) with; 0 when it had none.
    pub corr: [u32; 2],
    /// The slot's payload bytes (the message is at the start).
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// Decodes a dead letter a GPU kernel wrote into its dead-letter ring: the slot's
    /// `tag` and `corr`, and its payload, which starts with an
    /// [`abi::DeadLetterPrefix`](crate::abi::DeadLetterPrefix) (why, and the original
    /// message kind) followed by the message. The one decoder for every GPU backend.
    pub fn from_device(kernel: &str, tag: u32, corr: [u32; 2], payload: &[u8]) -> Self {
        use crate::abi::{DeadLetterPrefix, TAG_KIND_MASK, TAG_SENDER_SHIFT};
        let prefix = DeadLetterPrefix::read(payload).unwrap_or(DeadLetterPrefix {
            reason: 0,
            code: 0,
            port: 0,
            kind: tag & TAG_KIND_MASK,
        });
        let sender = tag >> TAG_SENDER_SHIFT;
        Self {
            kernel: kernel.to_owned(),
            reason: prefix.to_string(),
            is_input: prefix.is_input(),
            routed: matches!(prefix.reason(), Ok(crate::abi::DeadReason::Port)),
            tag: (sender << TAG_SENDER_SHIFT) | (prefix.kind & TAG_KIND_MASK),
            corr,
            payload: payload
                .get(DeadLetterPrefix::BYTES..)
                .unwrap_or_default()
                .to_vec(),
        }
    }
}

/// The runtime's dead-letter sink: every message a handler failed on, every message
/// emitted to a port bound to the sink, and every emit that found its downstream kernel
/// stopped. Unbounded, because dropping would lose messages: take them out with
/// [`DeadLetters::take`] and watch [`DeadLetters::total`] in metrics.
#[derive(Debug, Default)]
pub struct DeadLetters {
    queue: Mutex<VecDeque<DeadLetter>>,
    total: AtomicU64,
    /// The correlation ids of the newest failed letters (not `routed`) that carry one,
    /// with their reasons,
    /// whether the letters were taken or not: what a requester waiting for the reply
    /// to that id looks up (see [`DeadLetters::take_failure`]).
    failed: Mutex<Failed>,
    /// Tasks waiting for the reply to a correlation id, woken when a letter with that
    /// id comes in (one entry per request waiting, removed when it ends).
    watchers: Mutex<std::collections::HashMap<[u32; 2], std::task::Waker>>,
}

/// The newest correlation ids that went to the dead letters, at most `FAILED_KEPT`,
/// oldest first.
#[derive(Debug, Default)]
struct Failed {
    reasons: std::collections::HashMap<[u32; 2], String>,
    order: VecDeque<[u32; 2]>,
}

/// Correlation ids of dead letters kept for requesters to look up.
const FAILED_KEPT: usize = 4096;

impl DeadLetters {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps one message.
    pub fn push(&self, letter: DeadLetter) {
        tracing::debug!(kernel = %letter.kernel, reason = %letter.reason, "dead letter");
        let corr = letter.corr;
        let reason = (corr != [0, 0] && !letter.routed)
            .then(|| format!("kernel `{}`: {}", letter.kernel, letter.reason));
        self.queue.lock().push_back(letter);
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = reason {
            let mut failed = self.failed.lock();
            if failed.reasons.insert(corr, reason).is_none() {
                failed.order.push_back(corr);
            }
            while failed.order.len() > FAILED_KEPT {
                if let Some(oldest) = failed.order.pop_front() {
                    failed.reasons.remove(&oldest);
                }
            }
            drop(failed);
            if let Some(waker) = self.watchers.lock().remove(&corr) {
                waker.wake();
            }
        }
    }

    /// Why the message with correlation id `corr` went to the dead letters, if one did
    /// lately (among the newest 4,096 ids); forgets it. A requester waiting for
    /// the reply to `corr` asks this, so that a request whose message a handler failed
    /// on, or that could not be delivered, ends with that reason instead of waiting for
    /// a reply that will not come.
    pub fn take_failure(&self, corr: [u32; 2]) -> Option<String> {
        let mut failed = self.failed.lock();
        let reason = failed.reasons.remove(&corr)?;
        failed.order.retain(|c| *c != corr);
        Some(reason)
    }

    /// Wakes `waker` when a letter with correlation id `corr` comes in (once; ask
    /// [`DeadLetters::take_failure`] after registering, as the letter may be in already).
    pub fn wake_on_failure(&self, corr: [u32; 2], waker: &std::task::Waker) {
        let mut watchers = self.watchers.lock();
        match watchers.get_mut(&corr) {
            Some(old) if old.will_wake(waker) => {}
            Some(old) => old.clone_from(waker),
            None => {
                watchers.insert(corr, waker.clone());
            }
        }
    }

    /// Forgets the waker registered for `corr` (its request ended).
    pub fn stop_watching(&self, corr: [u32; 2]) {
        self.watchers.lock().remove(&corr);
    }

    /// Takes every message kept so far, oldest first.
    pub fn take(&self) -> Vec<DeadLetter> {
        self.queue.lock().drain(..).collect()
    }

    /// Messages kept now.
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Whether none are kept now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages ever kept (taken or not).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Why a route was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route names a kernel that is not part of the group or runtime.
    #[error(
        "no kernel is named `{0}` here: check the name (Group::kernel_names lists a group's \
         kernels), or add the kernel to the group before routing to it"
    )]
    UnknownKernel(String),
    /// The port number is not one of the kernel's ports.
    #[error(
        "kernel `{kernel}` has {ports} output port(s); port {port} does not exist: use a port \
         below {ports}, or raise KernelSpec::ports"
    )]
    NoSuchPort {
        /// The kernel.
        kernel: String,
        /// The port asked for.
        port: u32,
        /// How many it has.
        ports: u32,
    },
    /// The upstream's output type is not the downstream's input type.
    #[error("kernel `{from}` emits `{out_type}` but kernel `{to}` takes `{in_type}`: route only between matching message types")]
    TypeMismatch {
        /// Upstream.
        from: String,
        /// Its output type.
        out_type: &'static str,
        /// Downstream.
        to: String,
        /// Its input type.
        in_type: &'static str,
    },
    /// The upstream's messages do not fit the downstream's inbox slots.
    #[error("kernel `{from}` emits {message_bytes}-byte messages but kernel `{to}` has {slot_payload_bytes}-byte inbox slots: raise `{to}`'s slot_bytes")]
    SlotTooSmall {
        /// Upstream.
        from: String,
        /// Downstream.
        to: String,
        /// Bytes per emitted message.
        message_bytes: usize,
        /// Payload bytes per downstream slot.
        slot_payload_bytes: usize,
    },
    /// The routes form a cycle and the group did not allow cycles.
    #[error("routes form a cycle ({0}); a full ring in a cycle can stall it for good, so allow cycles explicitly (GroupBuilder::allow_cycles) only when the flow inside is bounded")]
    Cycle(String),
    /// The downstream kernel no longer takes messages.
    #[error("kernel `{kernel}` is {state}: it takes no messages, so nothing can be routed to it; restart it (Runtime::restart) or route elsewhere")]
    Stopped {
        /// The downstream.
        kernel: String,
        /// Its state.
        state: &'static str,
    },
    /// A route or topology names a kernel index the group does not have (for example a
    /// stage of another group builder).
    #[error("a route names kernel #{index} but the group has {kernels} kernel(s): route only between kernels added to this group")]
    NoSuchKernel {
        /// The index asked for.
        index: usize,
        /// How many kernels the group has.
        kernels: usize,
    },
    /// The kernel does not release its routing table in time (its handler is busy).
    #[error(
        "kernel `{0}` did not finish its turn within the command timeout, so its port could not \
         be rebound; its handler may be stuck: retry once it returns, terminate the kernel, or \
         raise RuntimeBuilder::command_timeout if the handler is only slow"
    )]
    Busy(String),
}

/// Checks that the directed graph over `nodes` nodes with `edges` has no cycle.
///
/// # Errors
/// [`RouteError::NoSuchKernel`] when an edge names a node `>= nodes`;
/// [`RouteError::Cycle`] naming the kernels of one cycle, in order, by `name`.
pub fn check_acyclic(
    nodes: usize,
    edges: &[(usize, usize)],
    name: impl Fn(usize) -> String,
) -> Result<(), RouteError> {
    if let Some(index) = edges
        .iter()
        .flat_map(|&(from, to)| [from, to])
        .find(|&n| n >= nodes)
    {
        return Err(RouteError::NoSuchKernel {
            index,
            kernels: nodes,
        });
    }
    match topological_order(nodes, edges) {
        Ok(_) => Ok(()),
        Err(cycle) => Err(RouteError::Cycle(
            cycle
                .iter()
                .map(|&n| name(n))
                .collect::<Vec<_>>()
                .join(" → "),
        )),
    }
}

/// The nodes in an order where every edge goes forward (upstream first), or the nodes
/// of one cycle (first node repeated at the end) when there is none. Ties keep index
/// order. For graphs with cycles allowed, [`drain_order`] gives an order anyway. Edges
/// naming a node `>= nodes` are ignored ([`check_acyclic`] refuses them).
pub fn topological_order(nodes: usize, edges: &[(usize, usize)]) -> Result<Vec<usize>, Vec<usize>> {
    let edges = in_range(nodes, edges);
    let edges = edges.as_slice();
    let mut indegree = vec![0usize; nodes];
    for &(_, to) in edges {
        indegree[to] += 1;
    }
    let mut ready: VecDeque<usize> = (0..nodes).filter(|&n| indegree[n] == 0).collect();
    let mut order = Vec::with_capacity(nodes);
    while let Some(node) = ready.pop_front() {
        order.push(node);
        for &(from, to) in edges {
            if from == node {
                indegree[to] -= 1;
                if indegree[to] == 0 {
                    ready.push_back(to);
                }
            }
        }
    }
    if order.len() == nodes {
        return Ok(order);
    }
    // Every node left has an incoming edge from another node left: walk backwards
    // along such edges until a node repeats.
    let left: Vec<bool> = indegree.iter().map(|&d| d > 0).collect();
    let start = (0..nodes).find(|&n| left[n]).unwrap_or(0);
    let mut path = vec![start];
    let mut node = start;
    loop {
        let Some(&(prev, _)) = edges.iter().find(|&&(f, t)| t == node && left[f]) else {
            return Err(path);
        };
        if let Some(at) = path.iter().position(|&n| n == prev) {
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(prev);
        node = prev;
    }
}

/// An order to drain a group in: upstream before downstream, and for kernels inside a
/// cycle (allowed explicitly) their index order, after everything feeding the cycle.
/// Edges naming a node `>= nodes` are ignored ([`check_acyclic`] refuses them).
pub fn drain_order(nodes: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    if let Ok(order) = topological_order(nodes, edges) {
        return order;
    }
    let edges = in_range(nodes, edges);
    let edges = edges.as_slice();
    // Kahn's algorithm, and when it stalls on a cycle, release the lowest-index
    // remaining node as if its inputs were done.
    let mut indegree = vec![0usize; nodes];
    for &(_, to) in edges {
        indegree[to] += 1;
    }
    let mut done = vec![false; nodes];
    let mut order = Vec::with_capacity(nodes);
    while order.len() < nodes {
        let next = (0..nodes)
            .find(|&n| !done[n] && indegree[n] == 0)
            .or_else(|| (0..nodes).find(|&n| !done[n]))
            .unwrap_or(0);
        done[next] = true;
        order.push(next);
        for &(from, to) in edges {
            if from == next && !done[to] {
                indegree[to] = indegree[to].saturating_sub(1);
            }
        }
    }
    order
}

/// The edges of `edges` whose both ends are nodes of a graph of `nodes` nodes.
fn in_range(nodes: usize, edges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    edges
        .iter()
        .copied()
        .filter(|&(from, to)| from < nodes && to < nodes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_a_dag_upstream_first() {
        let edges = [(2, 1), (1, 0), (2, 0)];
        assert_eq!(topological_order(3, &edges), Ok(vec![2, 1, 0]));
        assert_eq!(drain_order(3, &edges), vec![2, 1, 0]);
    }

    #[test]
    fn names_the_cycle() {
        let edges = [(0, 1), (1, 2), (2, 1), (3, 0)];
        let err = check_acyclic(4, &edges, |n| format!("k{n}")).unwrap_err();
        assert_eq!(err, RouteError::Cycle("k2 → k1 → k2".into()));
        let order = drain_order(4, &edges);
        assert_eq!(order[..2], [3, 0]);
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn an_edge_to_a_missing_node_is_an_error_not_a_panic() {
        let edges = [(0, 1), (1, 5)];
        assert_eq!(
            check_acyclic(2, &edges, |n| format!("k{n}")),
            Err(RouteError::NoSuchKernel {
                index: 5,
                kernels: 2
            })
        );
        assert_eq!(topological_order(2, &edges), Ok(vec![0, 1]));
        assert_eq!(drain_order(2, &[(7, 0), (1, 0), (0, 1)]).len(), 2);
    }

    #[test]
    fn self_loop_is_a_cycle() {
        assert!(check_acyclic(1, &[(0, 0)], |_| "a".into()).is_err());
    }

    #[test]
    fn device_dead_letters_decode_with_the_original_kind_and_message() {
        use crate::abi::{make_tag, DeadReason, TAG_KIND_MASK};
        let mut payload: Vec<u8> = [DeadReason::Stopped as u32, 0, 2, 5]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        payload.extend_from_slice(b"hello");
        // The slot tag carries the dead-letter ring's kind; the prefix the original one.
        let letter = super::DeadLetter::from_device("k", make_tag(0, 7), [1, 2], &payload);
        assert_eq!(letter.kernel, "k");
        assert_eq!(letter.reason, "emitted to port 2, whose kernel has stopped");
        assert!(!letter.is_input);
        assert_eq!(letter.tag, make_tag(5, 7));
        assert_eq!(letter.tag & TAG_KIND_MASK, 5);
        assert_eq!(letter.corr, [1, 2]);
        assert_eq!(letter.payload, b"hello");
    }
}
