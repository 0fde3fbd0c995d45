// tick.wgsl: one tick of a gyre kernel on the wgpu backend, the device side of the ring
// protocol in WGSL, and the handler interface.
//
// The wgpu backend runs kernels in TICKS, not as resident loops: WebGPU gives no
// forward-progress guarantee between workgroups and no host access to a buffer the GPU is
// using, so a kernel cannot spin waiting for the host. State stays resident in storage
// buffers across ticks. One tick is one queue submission: the host uploads what it sent,
// then every kernel of the group runs once (one dispatch each, in topological order), and
// the host copies back control blocks, ring headers and its outboxes.
//
// Memory: every ring and control block of a group lives in one storage buffer `mem`, laid
// out exactly as runtime/docs/ABI.md says (ring region = 384-byte header + slots; control
// block = 256 bytes), addressed in u32 words. Every word is accessed through its atomic
// view (atomicLoad / atomicStore, relaxed: WGSL has nothing else); ordering between
// producer and consumer comes from the dispatch and submission boundaries (ABI.md § 10):
// a kernel only ever reads what an earlier dispatch or the host (before the submission)
// wrote. The consumer logic is still the stamp test of § 5, word for word.
//
// A kernel runs as ONE invocation (workgroup size 1): it handles up to `quantum` messages
// of its inboxes in order. Before each message it checks that every output ring has room
// for `max_emits` messages; when one does not, it counts a stall and stops for this tick,
// leaving the message in its inbox (the downstream kernel or the host frees room by the
// next tick). So a handler never finds a ring full, and no emit is ever half done.
//
// Concatenated by the runtime before builtins.wgsl, the user handlers and the generated
// dispatch and entry points (runtime/src/backend/wgpu/codegen.rs), which also defines
// GYRE_MSG_WORDS.

@group(0) @binding(0) var<storage, read_write> mem: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> desc: array<u32>;

// ---- Layout (words) ---------------------------------------------------------------------

// Ring header (ABI.md § 2): capacity at 2, slot_bytes at 3, tail at 32, head at 64, slots
// after the 96-word header.
const GYRE_RING_CAPACITY: u32 = 2u;
const GYRE_RING_SLOT_BYTES: u32 = 3u;
const GYRE_RING_TAIL: u32 = 32u;
const GYRE_RING_HEAD: u32 = 64u;
const GYRE_RING_SLOTS: u32 = 96u;

// Control block (ABI.md § 7).
const GYRE_CB_COMMAND: u32 = 3u;
const GYRE_CB_COMMAND_EPOCH: u32 = 4u;
const GYRE_CB_STATE: u32 = 32u;
const GYRE_CB_ACK_EPOCH: u32 = 33u;
const GYRE_CB_HEARTBEAT: u32 = 34u;
const GYRE_CB_ERROR_CODE: u32 = 35u;
const GYRE_CB_RECEIVED: u32 = 36u;
const GYRE_CB_PROCESSED: u32 = 37u;
const GYRE_CB_EMITTED: u32 = 38u;
const GYRE_CB_STALLS: u32 = 39u;
const GYRE_CB_ERRORS: u32 = 40u;

// Kernel descriptor (runtime/src/backend/wgpu/plan.rs), GYRE_DESC_WORDS words per kernel.
const GYRE_DESC_WORDS: u32 = 80u;
const GYRE_D_CONTROL: u32 = 0u;
const GYRE_D_HANDLER: u32 = 1u;
const GYRE_D_KERNEL_ID: u32 = 2u;
const GYRE_D_N_INBOXES: u32 = 3u;
const GYRE_D_N_PORTS: u32 = 4u;
const GYRE_D_QUANTUM: u32 = 5u;
const GYRE_D_MAX_EMITS: u32 = 6u;
const GYRE_D_DEAD: u32 = 7u;
const GYRE_D_STATE: u32 = 8u;
const GYRE_D_STATE_WORDS: u32 = 9u;
const GYRE_D_SCRATCH: u32 = 10u;
const GYRE_D_FLAGS: u32 = 11u;  // bit 0: parallel (a workgroup of GYRE_WG handles a batch)
const GYRE_D_STAGE: u32 = 12u;  // parallel kernels: their staging records
const GYRE_D_PARAMS: u32 = 16u;
const GYRE_D_INBOX: u32 = 32u;  // 8 x (ring header, upstream control or GYRE_NONE)
const GYRE_D_PORT: u32 = 48u;   // 8 x (ring header, kind, payload bytes, peer control or GYRE_NONE)
const GYRE_NONE: u32 = 0xFFFFFFFFu;

// Port kinds (GYRE_PORT_*), dead-letter reasons (GYRE_DEAD_*) and the results of gyre_emit
// and the dispatch (GYRE_OK, GYRE_ERR_*; handlers return 0 or codes of their own) come from
// gyre_abi.wgsl, generated from runtime/src/abi.rs and concatenated before this file.

// ---- The handler interface -------------------------------------------------------------

struct GyreMsg {
    w: array<u32, GYRE_MSG_WORDS>,
}

struct GyreCtx {
    kernel: u32,
    desc: u32,
    state: u32,
    state_words: u32,
    kind: u32,
    sender: u32,
    corr0: u32,
    corr1: u32,
    emits: u32,
    n_ports: u32,
    stage: u32, // parallel kernels: where this message's emits are staged; GYRE_NONE otherwise
}

fn gyre_param(ctx: ptr<function, GyreCtx>, i: u32) -> u32 {
    return desc[(*ctx).desc + GYRE_D_PARAMS + min(i, 15u)];
}

fn gyre_state_load(ctx: ptr<function, GyreCtx>, i: u32) -> u32 {
    if (i >= (*ctx).state_words) {
        return 0u;
    }
    return atomicLoad(&mem[(*ctx).state + i]);
}

fn gyre_state_store(ctx: ptr<function, GyreCtx>, i: u32, v: u32) {
    if (i < (*ctx).state_words) {
        atomicStore(&mem[(*ctx).state + i], v);
    }
}

// ---- Ring protocol ---------------------------------------------------------------------

fn gyre_slot(ring: u32, pos: u32) -> u32 {
    let cap = atomicLoad(&mem[ring + GYRE_RING_CAPACITY]);
    let slot_words = atomicLoad(&mem[ring + GYRE_RING_SLOT_BYTES]) / 4u;
    return ring + GYRE_RING_SLOTS + (pos & (cap - 1u)) * slot_words;
}

fn gyre_payload_bytes(ring: u32) -> u32 {
    return atomicLoad(&mem[ring + GYRE_RING_SLOT_BYTES]) - 16u;
}

// Consumer test (ABI.md § 5): position `pos` holds a message iff its stamp is pos + 1.
fn gyre_ready(ring: u32, pos: u32) -> bool {
    return atomicLoad(&mem[gyre_slot(ring, pos)]) == pos + 1u;
}

// Free positions for the single producer (ABI.md § 4 step 3; never capacity - used before
// checking used <= capacity).
fn gyre_free(ring: u32) -> u32 {
    let cap = atomicLoad(&mem[ring + GYRE_RING_CAPACITY]);
    let used = atomicLoad(&mem[ring + GYRE_RING_TAIL]) - atomicLoad(&mem[ring + GYRE_RING_HEAD]);
    if (used > cap) {
        return 0u;
    }
    return cap - used;
}

// Publishes one message (ABI.md § 4 steps 7-8): tag, corr and payload, the stamp last,
// then the tail. `words` payload words come from `msg`; the rest of the slot is zeroed.
fn gyre_push(ring: u32, tag: u32, corr0: u32, corr1: u32, msg: ptr<function, GyreMsg>, bytes: u32) {
    let pos = atomicLoad(&mem[ring + GYRE_RING_TAIL]);
    let slot = gyre_slot(ring, pos);
    atomicStore(&mem[slot + 1u], tag);
    atomicStore(&mem[slot + 2u], corr0);
    atomicStore(&mem[slot + 3u], corr1);
    // The message's words only: like every producer of this ABI, the rest of the payload
    // keeps the bytes of an earlier lap (consumers read a message by its type's size).
    let words = min((bytes + 3u) / 4u, min(gyre_payload_bytes(ring) / 4u, GYRE_MSG_WORDS));
    for (var i = 0u; i < words; i++) {
        var v = (*msg).w[i];
        if (i == words - 1u && (bytes & 3u) != 0u) {
            // Keep only the message's own bytes of its last word.
            v = v & ((1u << ((bytes & 3u) * 8u)) - 1u);
        }
        atomicStore(&mem[slot + 4u + i], v);
    }
    atomicStore(&mem[slot], pos + 1u);
    atomicStore(&mem[ring + GYRE_RING_TAIL], pos + 1u);
}

fn gyre_stopped(control: u32) -> bool {
    if (control == GYRE_NONE) {
        return false;
    }
    let s = atomicLoad(&mem[control + GYRE_CB_STATE]);
    return s == GYRE_STATE_TERMINATED || s == GYRE_STATE_FAULTED;
}

// Writes a dead letter: a 16-byte reason block (reason, code, port, kind), then the
// message. The caller checked there is room.
fn gyre_dead_letter(d: u32, reason: u32, code: u32, port: u32, kind: u32, corr0: u32, corr1: u32,
                    msg: ptr<function, GyreMsg>, bytes: u32) {
    let ring = desc[d + GYRE_D_DEAD];
    var letter: GyreMsg;
    letter.w[0] = reason;
    letter.w[1] = code;
    letter.w[2] = port;
    letter.w[3] = kind;
    let room = gyre_payload_bytes(ring) - GYRE_DEAD_LETTER_PREFIX_BYTES;
    let n = min(min(bytes, room), (GYRE_MSG_WORDS - 4u) * 4u);
    for (var i = 0u; i < (n + 3u) / 4u; i++) {
        letter.w[4u + i] = (*msg).w[i];
    }
    let tag = (desc[d + GYRE_D_KERNEL_ID] << GYRE_TAG_SENDER_SHIFT) | GYRE_KIND_MESSAGE;
    gyre_push(ring, tag, corr0, corr1, &letter, GYRE_DEAD_LETTER_PREFIX_BYTES + n);
}

fn gyre_emit(ctx: ptr<function, GyreCtx>, port: u32, msg: ptr<function, GyreMsg>, bytes: u32) -> u32 {
    let d = (*ctx).desc;
    if (port >= (*ctx).n_ports) {
        return GYRE_ERR_NO_PORT;
    }
    let p = d + GYRE_D_PORT + port * 4u;
    let ring = desc[p];
    let kind = desc[p + 1u];
    if (bytes > desc[p + 2u] || bytes > GYRE_MSG_WORDS * 4u) {
        return GYRE_ERR_TOO_LARGE;
    }
    if ((*ctx).emits >= desc[d + GYRE_D_MAX_EMITS]) {
        return GYRE_ERR_TOO_MANY;
    }
    // A message emitted with the correlation id of the message in hand keeps its kind.
    var out_kind = GYRE_KIND_MESSAGE;
    if ((*ctx).kind == GYRE_KIND_TIMED) {
        out_kind = GYRE_KIND_TIMED;
    }
    if ((*ctx).stage != GYRE_NONE) {
        gyre_stage(ctx, port, kind, out_kind, msg, bytes);
        return GYRE_OK;
    }
    (*ctx).emits += 1u;
    if (kind == GYRE_PORT_DEAD) {
        gyre_dead_letter(d, GYRE_DEAD_PORT, 0u, port, out_kind, (*ctx).corr0, (*ctx).corr1, msg, bytes);
        return GYRE_OK;
    }
    if (kind == GYRE_PORT_KERNEL && gyre_stopped(desc[p + 3u])) {
        gyre_dead_letter(d, GYRE_DEAD_STOPPED, 0u, port, out_kind, (*ctx).corr0, (*ctx).corr1, msg, bytes);
        return GYRE_OK;
    }
    let tag = (desc[d + GYRE_D_KERNEL_ID] << GYRE_TAG_SENDER_SHIFT) | out_kind;
    gyre_push(ring, tag, (*ctx).corr0, (*ctx).corr1, msg, bytes);
    return GYRE_OK;
}

// How many messages this kernel can handle now without any output ring filling up: each
// message may emit max_emits messages to any one ring, and its dead letters (max_emits
// emits toward dead or stopped ports, plus its own if the handler fails) to the
// dead-letter ring. Within a dispatch room only shrinks (only this kernel produces into
// these rings; their consumers run later), so one check covers the whole batch.
fn gyre_budget(d: u32) -> u32 {
    let need = desc[d + GYRE_D_MAX_EMITS];
    var budget = gyre_free(desc[d + GYRE_D_DEAD]) / (need + 1u);
    for (var p = 0u; p < desc[d + GYRE_D_N_PORTS]; p++) {
        let e = d + GYRE_D_PORT + p * 4u;
        let kind = desc[e + 1u];
        if (kind == GYRE_PORT_DEAD) {
            continue;
        }
        if (kind == GYRE_PORT_KERNEL && gyre_stopped(desc[e + 3u])) {
            continue;
        }
        budget = min(budget, gyre_free(desc[e]) / need);
    }
    return budget;
}

// ---- The tick --------------------------------------------------------------------------

// Applies a new command, if the host wrote one before this submission (state, then the
// acknowledged epoch: ABI.md § 7), and bumps the heartbeat. Returns the state.
fn gyre_apply_command(c: u32) -> u32 {
    var state = atomicLoad(&mem[c + GYRE_CB_STATE]);

    // Commands apply between ticks: the host wrote command and epoch before this
    // submission; the kernel answers with state then epoch (ABI.md § 7).
    let epoch = atomicLoad(&mem[c + GYRE_CB_COMMAND_EPOCH]);
    if (epoch != atomicLoad(&mem[c + GYRE_CB_ACK_EPOCH])) {
        let command = atomicLoad(&mem[c + GYRE_CB_COMMAND]);
        let stopped = state == GYRE_STATE_TERMINATED || state == GYRE_STATE_FAULTED;
        if (!stopped) {
            switch command {
                case 0u: { }
                case 1u: { state = GYRE_STATE_ACTIVE; }
                case 2u: { state = GYRE_STATE_PAUSED; }
                case 3u: { state = GYRE_STATE_DRAINING; }
                case 4u: { state = GYRE_STATE_TERMINATED; }
                default: {
                    atomicStore(&mem[c + GYRE_CB_ERROR_CODE], GYRE_FAULT_BAD_COMMAND);
                    state = GYRE_STATE_FAULTED;
                }
            }
        }
        atomicStore(&mem[c + GYRE_CB_STATE], state);
        atomicStore(&mem[c + GYRE_CB_ACK_EPOCH], epoch);
    }
    atomicStore(&mem[c + GYRE_CB_HEARTBEAT], atomicLoad(&mem[c + GYRE_CB_HEARTBEAT]) + 1u);
    return state;
}

// Whether a draining kernel is done: every inbox empty and every upstream kernel stopped,
// so nothing more can arrive (the host closed the host inbox before it issued the drain).
fn gyre_drained(d: u32) -> bool {
    for (var i = 0u; i < desc[d + GYRE_D_N_INBOXES]; i++) {
        let ring = desc[d + GYRE_D_INBOX + i * 2u];
        let upstream = desc[d + GYRE_D_INBOX + i * 2u + 1u];
        if (gyre_ready(ring, atomicLoad(&mem[ring + GYRE_RING_HEAD]))) {
            return false;
        }
        if (upstream != GYRE_NONE && !gyre_stopped(upstream)) {
            return false;
        }
    }
    return true;
}

fn gyre_tick(k: u32) {
    let d = k * GYRE_DESC_WORDS;
    let c = desc[d + GYRE_D_CONTROL];
    let state = gyre_apply_command(c);
    if (state != GYRE_STATE_ACTIVE && state != GYRE_STATE_DRAINING) {
        return;
    }

    var received = atomicLoad(&mem[c + GYRE_CB_RECEIVED]);
    var processed = atomicLoad(&mem[c + GYRE_CB_PROCESSED]);
    var emitted = atomicLoad(&mem[c + GYRE_CB_EMITTED]);
    var stalls = atomicLoad(&mem[c + GYRE_CB_STALLS]);
    var errors = atomicLoad(&mem[c + GYRE_CB_ERRORS]);
    let inboxes = desc[d + GYRE_D_N_INBOXES];
    let quantum = desc[d + GYRE_D_QUANTUM];
    let scratch = desc[d + GYRE_D_SCRATCH];
    let first = atomicLoad(&mem[scratch]);
    let budget = gyre_budget(d);
    var n = 0u;
    var stalled = false;
    var faulted = false;
    for (var j = 0u; j < inboxes; j++) {
        let i = (first + j) % inboxes;
        let ring = desc[d + GYRE_D_INBOX + i * 2u];
        var head = atomicLoad(&mem[ring + GYRE_RING_HEAD]);
        let payload = gyre_payload_bytes(ring);
        // The ring's geometry, read once.
        let mask = atomicLoad(&mem[ring + GYRE_RING_CAPACITY]) - 1u;
        let slot_words = atomicLoad(&mem[ring + GYRE_RING_SLOT_BYTES]) / 4u;
        let slots = ring + GYRE_RING_SLOTS;
        loop {
            if (n >= quantum) {
                break;
            }
            let slot = slots + (head & mask) * slot_words;
            if (atomicLoad(&mem[slot]) != head + 1u) {
                break;
            }
            let tag = atomicLoad(&mem[slot + 1u]);
            if ((tag & GYRE_TAG_KIND_MASK) == GYRE_KIND_CANCELLED) {
                head += 1u;
                continue;
            }
            if (n >= budget) {
                stalls += 1u;
                stalled = true;
                break;
            }
            var msg: GyreMsg;
            let words = min(payload / 4u, GYRE_MSG_WORDS);
            for (var w = 0u; w < words; w++) {
                msg.w[w] = atomicLoad(&mem[slot + 4u + w]);
            }
            var ctx: GyreCtx;
            ctx.kernel = k;
            ctx.desc = d;
            ctx.state = desc[d + GYRE_D_STATE];
            ctx.state_words = desc[d + GYRE_D_STATE_WORDS];
            ctx.kind = tag & GYRE_TAG_KIND_MASK;
            ctx.sender = tag >> GYRE_TAG_SENDER_SHIFT;
            ctx.corr0 = atomicLoad(&mem[slot + 2u]);
            ctx.corr1 = atomicLoad(&mem[slot + 3u]);
            ctx.emits = 0u;
            ctx.n_ports = desc[d + GYRE_D_N_PORTS];
            ctx.stage = GYRE_NONE;
            let status = gyre_dispatch(desc[d + GYRE_D_HANDLER], &ctx, &msg, payload);
            received += 1u;
            processed += 1u;
            emitted += ctx.emits;
            if (status != GYRE_OK) {
                errors += 1u;
                // The original message, as it was in the inbox.
                var original: GyreMsg;
                for (var w = 0u; w < words; w++) {
                    original.w[w] = atomicLoad(&mem[slot + 4u + w]);
                }
                gyre_dead_letter(d, GYRE_DEAD_HANDLER_ERROR, status, 0u, ctx.kind, ctx.corr0, ctx.corr1,
                                 &original, payload);
            }
            head += 1u;
            n += 1u;
            if (status == GYRE_FAULT_KERNEL) {
                // The handler faulted its kernel: its message went to the dead letters
                // (what it emitted stands), the rest stays queued.
                atomicStore(&mem[c + GYRE_CB_ERROR_CODE], GYRE_FAULT_HANDLER_PANIC);
                atomicStore(&mem[c + GYRE_CB_STATE], GYRE_STATE_FAULTED);
                faulted = true;
                break;
            }
        }
        atomicStore(&mem[ring + GYRE_RING_HEAD], head);
        if (faulted) {
            break;
        }
        if (stalled || n >= quantum) {
            atomicStore(&mem[scratch], i + 1u);
            break;
        }
    }

    if (state == GYRE_STATE_DRAINING && !stalled && !faulted && n < quantum) {
        if (gyre_drained(d)) {
            atomicStore(&mem[c + GYRE_CB_STATE], GYRE_STATE_TERMINATED);
        }
    }
    atomicStore(&mem[c + GYRE_CB_RECEIVED], received);
    atomicStore(&mem[c + GYRE_CB_PROCESSED], processed);
    atomicStore(&mem[c + GYRE_CB_EMITTED], emitted);
    atomicStore(&mem[c + GYRE_CB_STALLS], stalls);
    atomicStore(&mem[c + GYRE_CB_ERRORS], errors);
}

// ---- Parallel kernels ------------------------------------------------------------------
//
// A kernel whose handler may run on several messages at once (stateless built-ins; flag
// bit 0) runs as a workgroup of GYRE_WG invocations. Per batch of up to GYRE_WG positions
// of one inbox:
//   1. invocation 0 picks the batch (the leading run of published slots, within the
//      quantum and the room budget);
//   2. every invocation i < batch runs the handler on message i; its emits go to staging
//      records in `mem`, and it counts them per output ring (9 rings: the ports' rings, a
//      port sharing another's ring counts as that one, and the dead-letter ring);
//   3. invocation 0 turns the counts into positions: a prefix sum per ring in message
//      order, from each ring's tail, and advances the tails;
//   4. every invocation writes its staged emits (and the dead letter of a failed handler)
//      into their slots, each slot's stamp last.
// So every ring receives a batch's messages in message order, exactly as the sequential
// kernel would write them; the dispatch boundary makes them visible downstream.

const GYRE_WG: u32 = 64u;
const GYRE_RINGS: u32 = 9u;            // 8 port rings and the dead-letter ring
const GYRE_DEAD_RING: u32 = 8u;
const GYRE_REC_WORDS: u32 = 5u + GYRE_MSG_WORDS; // ring, bytes, kind, reason, port, payload
const GYRE_CANCELLED_SLOT: u32 = 0xFFFFFFFBu;

var<workgroup> gw_state: u32;
var<workgroup> gw_go: u32;
var<workgroup> gw_ring: u32;
var<workgroup> gw_start: u32;
var<workgroup> gw_m: u32;
var<workgroup> gw_status: array<u32, 64>;
var<workgroup> gw_count: array<u32, 576>; // GYRE_WG * GYRE_RINGS
var<workgroup> gw_base: array<u32, 576>;

// The ring slot a port writes to: the first port with the same ring.
fn gyre_port_ring(d: u32, port: u32) -> u32 {
    let header = desc[d + GYRE_D_PORT + port * 4u];
    for (var j = 0u; j < port; j++) {
        if (desc[d + GYRE_D_PORT + j * 4u] == header) {
            return j;
        }
    }
    return port;
}

// Stages one emit of a parallel kernel's message (the checks were done by gyre_emit).
fn gyre_stage(ctx: ptr<function, GyreCtx>, port: u32, kind: u32, out_kind: u32,
              msg: ptr<function, GyreMsg>, bytes: u32) {
    let d = (*ctx).desc;
    var ring = gyre_port_ring(d, port);
    var reason = 0u;
    if (kind == GYRE_PORT_DEAD) {
        ring = GYRE_DEAD_RING;
        reason = GYRE_DEAD_PORT;
    } else if (kind == GYRE_PORT_KERNEL && gyre_stopped(desc[d + GYRE_D_PORT + port * 4u + 3u])) {
        ring = GYRE_DEAD_RING;
        reason = GYRE_DEAD_STOPPED;
    }
    let rec = (*ctx).stage + (*ctx).emits * GYRE_REC_WORDS;
    atomicStore(&mem[rec], ring);
    atomicStore(&mem[rec + 1u], bytes);
    atomicStore(&mem[rec + 2u], out_kind);
    atomicStore(&mem[rec + 3u], reason);
    atomicStore(&mem[rec + 4u], port);
    let words = min((bytes + 3u) / 4u, GYRE_MSG_WORDS);
    for (var i = 0u; i < words; i++) {
        atomicStore(&mem[rec + 5u + i], (*msg).w[i]);
    }
    (*ctx).emits += 1u;
}

fn gyre_ring_header(d: u32, r: u32) -> u32 {
    if (r == GYRE_DEAD_RING) {
        return desc[d + GYRE_D_DEAD];
    }
    return desc[d + GYRE_D_PORT + r * 4u];
}

// Writes one slot at `pos` of `ring`: tag, corr, an optional 4-word reason block, then
// `words` payload words copied from mem[src..]; the stamp last.
fn gyre_put(ring: u32, pos: u32, tag: u32, corr0: u32, corr1: u32, with_reason: bool,
            reason: vec4<u32>, src: u32, words: u32, bytes: u32) {
    let slot = gyre_slot(ring, pos);
    atomicStore(&mem[slot + 1u], tag);
    atomicStore(&mem[slot + 2u], corr0);
    atomicStore(&mem[slot + 3u], corr1);
    var at = slot + 4u;
    let room = gyre_payload_bytes(ring) / 4u;
    var n = min(words, room);
    if (with_reason) {
        atomicStore(&mem[at], reason.x);
        atomicStore(&mem[at + 1u], reason.y);
        atomicStore(&mem[at + 2u], reason.z);
        atomicStore(&mem[at + 3u], reason.w);
        at += 4u;
        n = min(words, room - 4u);
    }
    for (var i = 0u; i < n; i++) {
        var v = atomicLoad(&mem[src + i]);
        if (i == n - 1u && n == (bytes + 3u) / 4u && (bytes & 3u) != 0u) {
            v = v & ((1u << ((bytes & 3u) * 8u)) - 1u);
        }
        atomicStore(&mem[at + i], v);
    }
    atomicStore(&mem[slot], pos + 1u);
}

fn gyre_tick_parallel(k: u32, lid: u32) {
    let d = k * GYRE_DESC_WORDS;
    let c = desc[d + GYRE_D_CONTROL];
    if (lid == 0u) {
        gw_state = gyre_apply_command(c);
    }
    let state = workgroupUniformLoad(&gw_state);
    if (state != GYRE_STATE_ACTIVE && state != GYRE_STATE_DRAINING) {
        return;
    }
    let inboxes = desc[d + GYRE_D_N_INBOXES];
    let quantum = desc[d + GYRE_D_QUANTUM];
    let max_emits = desc[d + GYRE_D_MAX_EMITS];
    let scratch = desc[d + GYRE_D_SCRATCH];
    // Invocation 0's bookkeeping (the others never read it).
    var received = 0u;
    var processed = 0u;
    var emitted = 0u;
    var stalls = 0u;
    var errors = 0u;
    var budget = 0u;
    var n = 0u;
    var stalled = false;
    var kernel_faulted = false;
    var inbox = 0u;
    var tried = 0u;
    if (lid == 0u) {
        received = atomicLoad(&mem[c + GYRE_CB_RECEIVED]);
        processed = atomicLoad(&mem[c + GYRE_CB_PROCESSED]);
        emitted = atomicLoad(&mem[c + GYRE_CB_EMITTED]);
        stalls = atomicLoad(&mem[c + GYRE_CB_STALLS]);
        errors = atomicLoad(&mem[c + GYRE_CB_ERRORS]);
        budget = gyre_budget(d);
        inbox = atomicLoad(&mem[scratch]) % inboxes;
    }
    loop {
        if (lid == 0u) {
            // The next batch: the leading run of published slots of the next inbox that
            // has one, within the quantum and the room budget.
            gw_go = 0u;
            loop {
                if (tried >= inboxes || n >= quantum || stalled) {
                    break;
                }
                let ring = desc[d + GYRE_D_INBOX + inbox * 2u];
                let head = atomicLoad(&mem[ring + GYRE_RING_HEAD]);
                var m = 0u;
                let limit = min(GYRE_WG, quantum - n);
                loop {
                    if (m >= limit || !gyre_ready(ring, head + m)) {
                        break;
                    }
                    m += 1u;
                }
                if (m == 0u) {
                    inbox = (inbox + 1u) % inboxes;
                    tried += 1u;
                    continue;
                }
                if (budget == 0u) {
                    stalls += 1u;
                    stalled = true;
                    break;
                }
                m = min(m, budget);
                gw_go = 1u;
                gw_ring = ring;
                gw_start = head;
                gw_m = m;
                break;
            }
        }
        let go = workgroupUniformLoad(&gw_go);
        if (go == 0u) {
            break;
        }
        let ring = gw_ring;
        let start = gw_start;
        let m = gw_m;
        let stage = desc[d + GYRE_D_STAGE] + lid * max_emits * GYRE_REC_WORDS;
        if (lid < m) {
            for (var r = 0u; r < GYRE_RINGS; r++) {
                gw_count[lid * GYRE_RINGS + r] = 0u;
            }
            let slot = gyre_slot(ring, start + lid);
            let tag = atomicLoad(&mem[slot + 1u]);
            if ((tag & GYRE_TAG_KIND_MASK) == GYRE_KIND_CANCELLED) {
                gw_status[lid] = GYRE_CANCELLED_SLOT;
            } else {
                var msg: GyreMsg;
                let words = min(gyre_payload_bytes(ring) / 4u, GYRE_MSG_WORDS);
                for (var w = 0u; w < words; w++) {
                    msg.w[w] = atomicLoad(&mem[slot + 4u + w]);
                }
                var ctx: GyreCtx;
                ctx.kernel = k;
                ctx.desc = d;
                ctx.state = desc[d + GYRE_D_STATE];
                ctx.state_words = desc[d + GYRE_D_STATE_WORDS];
                ctx.kind = tag & GYRE_TAG_KIND_MASK;
                ctx.sender = tag >> GYRE_TAG_SENDER_SHIFT;
                ctx.corr0 = atomicLoad(&mem[slot + 2u]);
                ctx.corr1 = atomicLoad(&mem[slot + 3u]);
                ctx.emits = 0u;
                ctx.n_ports = desc[d + GYRE_D_N_PORTS];
                ctx.stage = stage;
                let status = gyre_dispatch(desc[d + GYRE_D_HANDLER], &ctx, &msg, gyre_payload_bytes(ring));
                gw_status[lid] = status;
                for (var e = 0u; e < ctx.emits; e++) {
                    let r = atomicLoad(&mem[stage + e * GYRE_REC_WORDS]);
                    gw_count[lid * GYRE_RINGS + r] += 1u;
                }
                // The failed message's own dead letter.
                gw_count[lid * GYRE_RINGS + GYRE_DEAD_RING] += select(0u, 1u, status != GYRE_OK);
                // How many it staged (scratch words 8.. hold one count per invocation).
                atomicStore(&mem[scratch + 8u + lid], ctx.emits);
            }
        }
        workgroupBarrier();
        storageBarrier();
        if (lid == 0u) {
            // Positions: per ring, a prefix sum in message order from the ring's tail.
            for (var r = 0u; r < GYRE_RINGS; r++) {
                let header = gyre_ring_header(d, r);
                if (r < GYRE_DEAD_RING && r >= desc[d + GYRE_D_N_PORTS]) {
                    continue;
                }
                var tail = atomicLoad(&mem[header + GYRE_RING_TAIL]);
                var used = false;
                for (var i = 0u; i < m; i++) {
                    gw_base[i * GYRE_RINGS + r] = tail;
                    if (gw_status[i] != GYRE_CANCELLED_SLOT) {
                        tail += gw_count[i * GYRE_RINGS + r];
                        used = used || gw_count[i * GYRE_RINGS + r] != 0u;
                    }
                }
                if (used) {
                    atomicStore(&mem[header + GYRE_RING_TAIL], tail);
                }
            }
        }
        workgroupBarrier();
        if (lid < m && gw_status[lid] != GYRE_CANCELLED_SLOT) {
            var next: array<u32, 9>;
            let emits = atomicLoad(&mem[scratch + 8u + lid]);
            let slot = gyre_slot(ring, start + lid);
            let corr0 = atomicLoad(&mem[slot + 2u]);
            let corr1 = atomicLoad(&mem[slot + 3u]);
            let sender = desc[d + GYRE_D_KERNEL_ID] << GYRE_TAG_SENDER_SHIFT;
            for (var e = 0u; e < emits; e++) {
                let rec = stage + e * GYRE_REC_WORDS;
                let r = atomicLoad(&mem[rec]);
                let bytes = atomicLoad(&mem[rec + 1u]);
                let kind = atomicLoad(&mem[rec + 2u]);
                let reason = atomicLoad(&mem[rec + 3u]);
                let port = atomicLoad(&mem[rec + 4u]);
                let pos = gw_base[lid * GYRE_RINGS + r] + next[r];
                next[r] += 1u;
                let header = gyre_ring_header(d, r);
                let words = (bytes + 3u) / 4u;
                if (r == GYRE_DEAD_RING) {
                    gyre_put(header, pos, sender | GYRE_KIND_MESSAGE, corr0, corr1, true,
                             vec4<u32>(reason, 0u, port, kind), rec + 5u, words, bytes);
                } else {
                    gyre_put(header, pos, sender | kind, corr0, corr1, false, vec4<u32>(),
                             rec + 5u, words, bytes);
                }
            }
            let status = gw_status[lid];
            if (status != GYRE_OK) {
                // The dead letter of the failed message: its slot as it is in the inbox.
                let pos = gw_base[lid * GYRE_RINGS + GYRE_DEAD_RING] + next[GYRE_DEAD_RING];
                let tag = atomicLoad(&mem[slot + 1u]);
                let payload = gyre_payload_bytes(ring);
                gyre_put(desc[d + GYRE_D_DEAD], pos, sender | GYRE_KIND_MESSAGE, corr0, corr1, true,
                         vec4<u32>(GYRE_DEAD_HANDLER_ERROR, status, 0u, tag & GYRE_TAG_KIND_MASK),
                         slot + 4u, payload / 4u, payload);
            }
        }
        storageBarrier();
        workgroupBarrier();
        if (lid == 0u) {
            var taken = 0u;
            for (var i = 0u; i < m; i++) {
                let status = gw_status[i];
                if (status == GYRE_CANCELLED_SLOT) {
                    continue;
                }
                taken += 1u;
                emitted += atomicLoad(&mem[scratch + 8u + i]);
                if (status != GYRE_OK) {
                    errors += 1u;
                }
                if (status == GYRE_FAULT_KERNEL) {
                    kernel_faulted = true;
                }
            }
            received += taken;
            processed += taken;
            n += taken;
            budget -= min(budget, m);
            atomicStore(&mem[ring + GYRE_RING_HEAD], start + m);
            if (kernel_faulted) {
                // A handler faulted its kernel: its message went to the dead letters
                // like a failed one (the batch ran at once); no batch follows.
                atomicStore(&mem[c + GYRE_CB_ERROR_CODE], GYRE_FAULT_HANDLER_PANIC);
                atomicStore(&mem[c + GYRE_CB_STATE], GYRE_STATE_FAULTED);
                stalled = true;
            }
        }
    }
    if (lid == 0u) {
        atomicStore(&mem[scratch], inbox);
        if (state == GYRE_STATE_DRAINING && !stalled && n < quantum) {
            if (gyre_drained(d)) {
                atomicStore(&mem[c + GYRE_CB_STATE], GYRE_STATE_TERMINATED);
            }
        }
        atomicStore(&mem[c + GYRE_CB_RECEIVED], received);
        atomicStore(&mem[c + GYRE_CB_PROCESSED], processed);
        atomicStore(&mem[c + GYRE_CB_EMITTED], emitted);
        atomicStore(&mem[c + GYRE_CB_STALLS], stalls);
        atomicStore(&mem[c + GYRE_CB_ERRORS], errors);
    }
}
