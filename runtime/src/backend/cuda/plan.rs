//! The launch descriptor: what each block of a group's grid reads to know its kernel.
//!
//! Mirrors `gyre_kernel_desc` and `gyre_ring_ref` of `kernels/include/persistent.cuh`.
//! The descriptor is not part of the shared-memory ABI (`crate::abi`): the host writes it
//! once into device memory before launch and the device only reads it. Its layout is
//! still checked on every compile: [`layout_asserts`] emits a `static_assert` for the size
//! and every field offset below, and the generated group source includes them, so a
//! drift between this file and `persistent.cuh` fails the NVRTC (or g++) compile.

use bytemuck::{Pod, Zeroable};

/// Most inbox rings of one kernel: the host inbox and one per upstream route.
pub const MAX_INBOXES: usize = 8;
/// Most output ports of one kernel.
pub const MAX_PORTS: usize = 8;
/// Most threads per block the device loop supports.
pub const MAX_THREADS: u32 = 256;
/// Handler parameter words.
pub const PARAM_WORDS: usize = 16;
/// Bytes of a staging record's header; the payload follows.
pub const RECORD_HEADER_BYTES: u32 = 32;
/// Bytes at the start of a kernel's scratch: the pending record.
pub const SCRATCH_HEADER_BYTES: u32 = 128;

/// Ring in mapped host memory: acquire/release at system scope.
pub const SCOPE_SYSTEM: u32 = 0;
/// Ring in device memory: acquire/release at GPU scope.
pub const SCOPE_DEVICE: u32 = 1;

/// Kernel flag: one thread handles a batch, in order.
pub const FLAG_SEQUENTIAL: u32 = 1;

/// `gyre_ring_ref`: one ring as a kernel sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RingRef {
    /// Device address of the ring header.
    pub header: u64,
    /// [`SCOPE_SYSTEM`] or [`SCOPE_DEVICE`].
    pub scope: u32,
    /// Ports: a [`PortKind`](crate::abi::PortKind) word; inboxes: 0.
    pub kind: u32,
    /// Ports to a kernel: that kernel's control block, to see it stopped; otherwise 0.
    pub peer_control: u64,
    /// Ports: the largest message the port takes (its ring's payload; the dead-letter
    /// ring's payload less the 16-byte reason block).
    pub payload_bytes: u32,
    /// Zero.
    pub reserved: u32,
}

/// `gyre_kernel_desc`: one kernel of a group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct KernelDesc {
    /// Device address of the control block (mapped host memory).
    pub control: u64,
    /// Device address of the kernel's state (device memory), or 0.
    pub state: u64,
    /// Device address of the staging records and pending record (device memory).
    pub scratch: u64,
    /// Device address of the dead-letter ring (mapped host memory).
    pub dead_letters: u64,
    /// Case of the generated dispatch.
    pub handler: u32,
    /// Sender id in slot tags.
    pub kernel_id: u32,
    /// Inbox rings in use.
    pub n_inboxes: u32,
    /// Ports in use.
    pub n_ports: u32,
    /// Most messages per batch.
    pub quantum: u32,
    /// Most emits per message.
    pub max_emits: u32,
    /// Bytes per staging record.
    pub record_stride: u32,
    /// [`FLAG_SEQUENTIAL`] or 0.
    pub flags: u32,
    /// Handler parameters.
    pub params: [u32; PARAM_WORDS],
    /// Inbox rings.
    pub inbox: [RingRef; MAX_INBOXES],
    /// Port rings.
    pub port: [RingRef; MAX_PORTS],
}

/// The pending record at the start of a kernel's scratch (`gyre_pending`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Pending {
    /// 1 when the fields below describe unpublished emits.
    pub valid: u32,
    /// Batch index of the message whose emits are pending.
    pub message: u32,
    /// First unpublished emit.
    pub first: u32,
    /// Emits the message made.
    pub count: u32,
    /// Zero.
    pub reserved: [u32; 28],
}

const _: () = {
    assert!(size_of::<RingRef>() == 32);
    assert!(size_of::<KernelDesc>() == 640);
    assert!(size_of::<Pending>() == SCRATCH_HEADER_BYTES as usize);
};

/// `static_assert`s of the descriptor's size and every field offset, for the generated
/// group source: the device build fails if `persistent.cuh` drifts from this file.
#[allow(clippy::too_many_lines)] // one line per checked field
pub fn layout_asserts() -> String {
    use std::fmt::Write as _;
    use std::mem::{offset_of, size_of};
    let mut out = String::new();
    let mut check = |what: &str, value: usize| {
        let _ = writeln!(
            out,
            "GYRE_STATIC_ASSERT({what} == {value}, \"{what} == {value}\");"
        );
    };
    check("sizeof(gyre_ring_ref)", size_of::<RingRef>());
    check(
        "GYRE_OFFSETOF(gyre_ring_ref, header)",
        offset_of!(RingRef, header),
    );
    check(
        "GYRE_OFFSETOF(gyre_ring_ref, scope)",
        offset_of!(RingRef, scope),
    );
    check(
        "GYRE_OFFSETOF(gyre_ring_ref, kind)",
        offset_of!(RingRef, kind),
    );
    check(
        "GYRE_OFFSETOF(gyre_ring_ref, peer_control)",
        offset_of!(RingRef, peer_control),
    );
    check(
        "GYRE_OFFSETOF(gyre_ring_ref, payload_bytes)",
        offset_of!(RingRef, payload_bytes),
    );
    check("sizeof(gyre_kernel_desc)", size_of::<KernelDesc>());
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, control)",
        offset_of!(KernelDesc, control),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, state)",
        offset_of!(KernelDesc, state),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, scratch)",
        offset_of!(KernelDesc, scratch),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, dead_letters)",
        offset_of!(KernelDesc, dead_letters),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, handler)",
        offset_of!(KernelDesc, handler),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, kernel_id)",
        offset_of!(KernelDesc, kernel_id),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, n_inboxes)",
        offset_of!(KernelDesc, n_inboxes),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, n_ports)",
        offset_of!(KernelDesc, n_ports),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, quantum)",
        offset_of!(KernelDesc, quantum),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, max_emits)",
        offset_of!(KernelDesc, max_emits),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, record_stride)",
        offset_of!(KernelDesc, record_stride),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, flags)",
        offset_of!(KernelDesc, flags),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, params)",
        offset_of!(KernelDesc, params),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, inbox)",
        offset_of!(KernelDesc, inbox),
    );
    check(
        "GYRE_OFFSETOF(gyre_kernel_desc, port)",
        offset_of!(KernelDesc, port),
    );
    check("sizeof(gyre_pending)", size_of::<Pending>());
    check("GYRE_MAX_INBOXES", MAX_INBOXES);
    check("GYRE_MAX_PORTS", MAX_PORTS);
    check("GYRE_MAX_THREADS", MAX_THREADS as usize);
    check("GYRE_PARAM_WORDS", PARAM_WORDS);
    check("GYRE_SCOPE_SYSTEM", SCOPE_SYSTEM as usize);
    check("GYRE_SCOPE_DEVICE", SCOPE_DEVICE as usize);
    check("GYRE_FLAG_SEQUENTIAL", FLAG_SEQUENTIAL as usize);
    check("GYRE_RECORD_HEADER_BYTES", RECORD_HEADER_BYTES as usize);
    check("GYRE_SCRATCH_HEADER_BYTES", SCRATCH_HEADER_BYTES as usize);
    out
}
