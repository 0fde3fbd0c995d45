//! loom models of the ring protocol in `gyre_runtime::ring`.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p gyre-runtime --release
//! --test loom_ring --target-dir target-loom`.
//!
//! Every model is tiny (a ring of one or two slots, a handful of messages) so that loom
//! can explore all interleavings up to the preemption bound. The slot bodies are loom
//! cells, so besides the assertions here loom itself fails a model when a producer's
//! write to a body is not ordered after the consumer's read of the previous lap (or the
//! consumer's read after the producer's write).
#![cfg(loom)]

use std::sync::Arc;

use gyre_runtime::abi::{make_tag, KIND_MESSAGE};
use gyre_runtime::ring::{ClaimError, Consumer, LoomMemory, Producer, RingLayout, Step};
use loom::thread;

type Mem = Arc<LoomMemory>;

/// A ring of `capacity` 32-byte slots with both cursors at `origin`.
///
/// `std::sync::Arc` because `RingMemory` is implemented for it. The memory is not `Sync`
/// (loom's cells are not), which is fine here: loom threads take no `Send` bound and run
/// one at a time on the model's own thread.
#[allow(clippy::arc_with_non_send_sync)]
fn ring(capacity: u32, origin: u32) -> (Arc<Producer<Mem>>, Consumer<Mem>) {
    let layout = RingLayout::new(capacity, 32).expect("valid test layout");
    let mem = Arc::new(LoomMemory::new(layout, origin));
    (
        Arc::new(Producer::new(Arc::clone(&mem)).expect("the ring's first producer")),
        Consumer::new(mem).expect("the ring's first consumer"),
    )
}

/// One received message: sender id, value and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Got {
    sender: u32,
    value: u32,
    position: u32,
}

/// Writes `value` into claimed slot `i`: in the correlation id (twice, the second
/// inverted) and in the first payload word, so a torn or stale slot shows.
fn fill<M: gyre_runtime::ring::RingMemory>(
    claim: &gyre_runtime::ring::Claim<'_, M>,
    i: u32,
    sender: u32,
    value: u32,
) {
    claim.write(
        i,
        make_tag(KIND_MESSAGE, sender),
        [value, !value],
        |payload| {
            payload[..4].copy_from_slice(&value.to_le_bytes());
        },
    );
}

/// Sends one message, yielding to the model while the ring is full.
fn send(producer: &Producer<Mem>, sender: u32, value: u32) {
    loop {
        match producer.try_claim(1) {
            Ok(claim) => {
                fill(&claim, 0, sender, value);
                claim.publish();
                return;
            }
            Err(ClaimError::Full { free }) => {
                assert_eq!(free, 0, "a claim of one slot fails only when none is free");
                thread::yield_now();
            }
            Err(other) => panic!("unexpected claim error {other:?}"),
        }
    }
}

/// Decodes one slot, checking that its three copies of the value agree.
fn decode(slot: &gyre_runtime::ring::SlotRef<'_>) -> Got {
    let value = slot.corr[0];
    assert_eq!(
        slot.corr[1], !value,
        "correlation words of one message disagree"
    );
    assert_eq!(
        slot.payload[..4],
        value.to_le_bytes(),
        "payload does not match the header"
    );
    assert_eq!(slot.tag & 0xFFFF, KIND_MESSAGE);
    Got {
        sender: slot.tag >> 16,
        value,
        position: slot.position,
    }
}

/// Receives exactly `count` messages, at most `batch` per `consume`, yielding while empty.
fn receive(consumer: &mut Consumer<Mem>, count: usize, batch: u32) -> Vec<Got> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let released = consumer.consume(batch, |slot| {
            got.push(decode(&slot));
            Step::Next
        });
        assert!(released <= batch, "consume released more than asked for");
        if released == 0 {
            thread::yield_now();
        }
    }
    got
}

/// The values one sender sent, in the order they were received.
fn from_sender(got: &[Got], sender: u32) -> Vec<u32> {
    got.iter()
        .filter(|g| g.sender == sender)
        .map(|g| g.value)
        .collect()
}

/// One producer sends three messages through two slots: the producer must wait on the
/// full edge and reload `head`; the consumer gets every message once, in order, with its
/// body intact, at consecutive positions.
#[test]
fn spsc_through_the_full_edge() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            for value in 1..=3 {
                send(&producer, 7, value);
            }
        });
        let got = receive(&mut consumer, 3, 2);
        sender.join().expect("producer thread");
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            got.iter().map(|g| g.position).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(got.iter().all(|g| g.sender == 7));
        assert!(consumer.is_empty());
        assert_eq!(consumer.consume(4, |_| Step::Next), 0);
    });
}

/// Tries to send `value`, yielding to the model at most `patience` times while the ring
/// is full. Returns whether it was sent.
///
/// Bounded on purpose: with two producers waiting on a full ring, loom would otherwise
/// explore the unfair schedule in which they yield to each other forever and never to the
/// consumer, and give up with "exceeded maximum number of branches".
fn try_send(producer: &Producer<Mem>, sender: u32, value: u32, patience: u32) -> bool {
    for _ in 0..=patience {
        match producer.try_claim(1) {
            Ok(claim) => {
                fill(&claim, 0, sender, value);
                claim.publish();
                return true;
            }
            Err(ClaimError::Full { free }) => {
                assert_eq!(free, 0, "a claim of one slot fails only when none is free");
                // The racy gauge stays within the ring even while another producer's
                // claims and the consumer move both cursors under it.
                let gauge = producer.free();
                assert!(gauge <= producer.capacity(), "Producer::free() = {gauge}");
                thread::yield_now();
            }
            Err(other) => panic!("unexpected claim error {other:?}"),
        }
    }
    false
}

/// A producer thread that sends `values` in order and stops at the first that does not
/// fit within its patience. Returns the values it sent.
fn spawn_sender(
    producer: &Arc<Producer<Mem>>,
    sender: u32,
    values: &'static [u32],
    patience: u32,
) -> thread::JoinHandle<Vec<u32>> {
    let producer = Arc::clone(producer);
    thread::spawn(move || {
        let mut sent = Vec::new();
        for &value in values {
            if !try_send(&producer, sender, value, patience) {
                break;
            }
            sent.push(value);
        }
        sent
    })
}

/// Consumes for `rounds` rounds of at most `batch` messages, yielding when empty.
fn consume_rounds(consumer: &mut Consumer<Mem>, rounds: u32, batch: u32, got: &mut Vec<Got>) {
    for _ in 0..rounds {
        if consumer.consume(batch, |slot| {
            got.push(decode(&slot));
            Step::Next
        }) == 0
        {
            thread::yield_now();
        }
    }
}

/// Two producers share one `Producer` (they claim with the CAS on `tail` and share the
/// cached head), consumed concurrently; then the senders are joined and the rest
/// drained. Whatever each sender reports sent arrives exactly once, in that sender's
/// order, at consecutive positions; nothing else arrives.
fn two_producers(capacity: u32, a: &'static [u32], b: &'static [u32], batch: u32, patience: u32) {
    loom::model(move || {
        let (producer, mut consumer) = ring(capacity, 0);
        let first = spawn_sender(&producer, 1, a, patience);
        let second = spawn_sender(&producer, 2, b, patience);
        let mut got = Vec::new();
        consume_rounds(&mut consumer, 3, batch, &mut got);
        let sent_a = first.join().expect("producer a");
        let sent_b = second.join().expect("producer b");
        // Joined: everything sent is published and visible now.
        consume_rounds(&mut consumer, 1, u32::MAX, &mut got);
        assert_eq!(from_sender(&got, 1), sent_a);
        assert_eq!(from_sender(&got, 2), sent_b);
        let positions: Vec<u32> = got.iter().map(|g| g.position).collect();
        let expected: Vec<u32> = (0..got.len() as u32).collect();
        assert_eq!(
            positions, expected,
            "positions are consecutive from the origin"
        );
        assert!(consumer.is_empty());
    });
}

/// One slot: every message but the first waits for the consumer, so both producers
/// reload `head` and refresh the shared cached head while the consumer releases slots.
#[test]
fn two_producers_one_slot() {
    two_producers(1, &[10, 11], &[20], 1, 1);
}

/// Two slots, two messages each, batch consume: claims of both senders interleave.
#[test]
fn two_producers_two_slots() {
    two_producers(2, &[10, 11], &[20, 21], 2, 2);
}

/// Cursors start two before `u32::MAX` wraps: the stamps of the first lap, the free-space
/// arithmetic and the "full iff stamp == position + 1" test all cross the wrap.
#[test]
fn wraparound_at_u32_max() {
    loom::model(|| {
        let origin = u32::MAX - 1;
        let (producer, mut consumer) = ring(2, origin);
        let sender = thread::spawn(move || {
            for value in 1..=4 {
                send(&producer, 3, value);
            }
        });
        let got = receive(&mut consumer, 4, 2);
        sender.join().expect("producer thread");
        assert_eq!(
            got.iter().map(|g| g.value).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let positions: Vec<u32> = got.iter().map(|g| g.position).collect();
        assert_eq!(positions, [u32::MAX - 1, u32::MAX, 0, 1]);
        assert_eq!(consumer.head(), 2);
        assert!(consumer.is_empty());
    });
}

/// The full and empty edges, with the consumer freeing one slot concurrently: a claim of
/// two slots can never succeed (at most one is ever free), a claim of one succeeds once
/// the consumer released a slot, and afterwards the ring is exactly full again.
#[test]
fn full_and_empty_edges() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        assert!(consumer.is_empty());
        assert_eq!(
            consumer.consume(2, |_| Step::Next),
            0,
            "an empty ring yields nothing"
        );
        assert_eq!(producer.try_claim(3).err(), Some(ClaimError::TooMany));
        send(&producer, 1, 1);
        send(&producer, 1, 2);
        assert_eq!(
            producer.try_claim(1).err(),
            Some(ClaimError::Full { free: 0 })
        );
        assert_eq!(producer.len(), 2);

        let reader = thread::spawn(move || {
            let got = receive(&mut consumer, 1, 1);
            assert_eq!(got[0].value, 1);
            consumer
        });
        loop {
            match producer.try_claim(2) {
                Err(ClaimError::Full { free }) => assert!(free <= 1, "{free} slots free"),
                other => panic!("a claim of two slots got {other:?} with one slot freeable"),
            }
            match producer.try_claim(1) {
                Ok(claim) => {
                    fill(&claim, 0, 1, 3);
                    claim.publish();
                    break;
                }
                Err(ClaimError::Full { free: 0 }) => thread::yield_now(),
                Err(other) => panic!("unexpected claim error {other:?}"),
            }
        }
        let mut consumer = reader.join().expect("consumer thread");
        assert_eq!(
            producer.try_claim(1).err(),
            Some(ClaimError::Full { free: 0 })
        );
        let got = receive(&mut consumer, 2, 4);
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [2, 3]);
        assert!(consumer.is_empty());
        assert_eq!(consumer.consume(2, |_| Step::Next), 0);
        assert!(producer.is_empty());
    });
}

/// A producer sends while another thread closes the ring. After `close` returned `tail`
/// and `wait_published(tail)` returned true, one `consume` sees exactly the messages
/// whose `try_claim` returned `Ok`: none lost (a claim that got in before the close is
/// inside `tail`), none extra (a claim that raced the close was cancelled).
#[test]
fn close_races_a_claim() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let closer = Arc::clone(&producer);
        let sender = thread::spawn(move || {
            let mut sent = Vec::new();
            for value in 1..=2 {
                match producer.try_claim(1) {
                    Ok(claim) => {
                        fill(&claim, 0, 1, value);
                        claim.publish();
                        sent.push(value);
                    }
                    Err(ClaimError::Closed) => break,
                    Err(other) => panic!("two messages fit two slots, got {other:?}"),
                }
            }
            assert!(producer.is_closed() || sent.len() == 2);
            sent
        });

        let tail = closer.close();
        assert!(closer.is_closed());
        assert_eq!(closer.try_claim(1).err(), Some(ClaimError::Closed));
        assert!(
            consumer.wait_published(tail, u32::MAX),
            "claims before the close get published"
        );
        let mut got = Vec::new();
        consumer.consume(4, |slot| {
            got.push(decode(&slot).value);
            Step::Next
        });
        // Everything before `tail` is released, plus at most the one claim that raced the
        // close and was cancelled (published as cancelled, so `consume` skips past it).
        assert!(
            consumer.head().wrapping_sub(tail) <= 1,
            "head {} tail {tail}",
            consumer.head()
        );

        let sent = sender.join().expect("producer thread");
        assert_eq!(
            got, sent,
            "consumed after wait_published != sends that returned Ok"
        );
        // A claim that raced the close may sit after `tail`, cancelled: never a message.
        let mut late = 0;
        consumer.consume(4, |_| {
            late += 1;
            Step::Next
        });
        assert_eq!(
            late, 0,
            "a message was published after close returned its tail"
        );
    });
}

/// Sends 1 and 2 through exclusive claims until the ring is closed; returns what was sent.
fn spawn_exclusive_sender(producer: Arc<Producer<Mem>>) -> thread::JoinHandle<Vec<u32>> {
    thread::spawn(move || {
        let mut sent = Vec::new();
        for value in 1..=2 {
            // SAFETY: this thread is the ring's only producer; `close` may race it,
            // which the claim allows.
            match unsafe { producer.try_claim_exclusive(1) } {
                Ok(claim) => {
                    fill(&claim, 0, 1, value);
                    claim.publish();
                    sent.push(value);
                }
                Err(ClaimError::Closed) => break,
                Err(other) => panic!("two messages fit two slots, got {other:?}"),
            }
        }
        sent
    })
}

/// After a close returned `tail`: the messages consumed once everything before `tail` is
/// published, while the sender may still run, are exactly the sends that returned `Ok`
/// (known once `sender` is joined, after consuming), and nothing comes after them.
fn check_closed_at(consumer: &mut Consumer<Mem>, tail: u32, sender: thread::JoinHandle<Vec<u32>>) {
    assert!(
        consumer.wait_published(tail, u32::MAX),
        "claims before the close get published"
    );
    let mut got = Vec::new();
    consumer.consume(4, |slot| {
        got.push(decode(&slot).value);
        Step::Next
    });
    let sent = sender.join().expect("producer thread");
    assert_eq!(
        got, sent,
        "consumed after wait_published != sends that returned Ok"
    );
    let mut late = 0;
    consumer.consume(4, |_| {
        late += 1;
        Step::Next
    });
    assert_eq!(
        late, 0,
        "a message was published after close returned its tail"
    );
}

/// The single-producer claim (`try_claim_exclusive`: plain store of `tail`, then the light
/// side of the asymmetric fence and a load of `closed`) racing `close` (store `closed`,
/// heavy side, RMW of `tail`): the messages consumed after `wait_published` are exactly
/// those whose claim returned `Ok`, and nothing is published past the returned tail.
#[test]
fn close_races_an_exclusive_claim() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let closer = Arc::clone(&producer);
        let sender = spawn_exclusive_sender(producer);
        let tail = closer.close();
        check_closed_at(&mut consumer, tail, sender);
    });
}

/// Two closers race an exclusive sender: the first to finish its heavy fence marks the
/// ring fenced, and a later `close` skips the fence (`close_all`). The messages consumed
/// after waiting on the smaller of the two tails are exactly the sends that returned
/// `Ok`, and nothing is published past it.
#[test]
fn closing_again_needs_no_fence() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let first = Arc::clone(&producer);
        let second = Arc::clone(&producer);
        let sender = spawn_exclusive_sender(producer);
        let closer = thread::spawn(move || first.close());
        let tail = second.close();
        let first_tail = closer.join().expect("closer thread");
        // Each closer's tail must cover every send that returned `Ok`: check the smaller.
        let tail = if tail.wrapping_sub(first_tail) < 1 << 31 {
            first_tail
        } else {
            tail
        };
        check_closed_at(&mut consumer, tail, sender);
    });
}

/// The closer waits on the producer side (`Producer::wait_published`) while the
/// consumer keeps consuming and a sender races the close, on a ring of one slot: the
/// consumer may free the slot of a position the closer has yet to check, and a claim
/// that raced the close may take it (and cancel it). The wait must still see every
/// position before `tail` as published and return, and the consumer must end up with
/// exactly the sends that returned `Ok`.
#[test]
fn close_while_consuming() {
    loom::model(|| {
        let (producer, consumer) = ring(1, 0);
        let sending = Arc::clone(&producer);
        let sender = thread::spawn(move || {
            let mut sent = Vec::new();
            for value in 1..=2 {
                match sending.try_claim(1) {
                    Ok(claim) => {
                        fill(&claim, 0, 1, value);
                        claim.publish();
                        sent.push(value);
                    }
                    Err(ClaimError::Closed) => break,
                    Err(ClaimError::Full { .. }) => thread::yield_now(),
                    Err(ClaimError::TooMany) => unreachable!("claims of one slot"),
                }
            }
            sent
        });
        let reader = thread::spawn(move || {
            let mut consumer = consumer;
            let mut got = Vec::new();
            consume_rounds(&mut consumer, 2, 1, &mut got);
            (consumer, got)
        });

        let tail = producer.close();
        assert!(
            producer.wait_published(tail, 16),
            "every position before the closing tail is published (or consumed)"
        );
        let sent = sender.join().expect("producer thread");
        let (mut consumer, mut got) = reader.join().expect("consumer thread");
        consume_rounds(&mut consumer, 1, u32::MAX, &mut got);
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), sent);
        assert!(consumer.head().wrapping_sub(tail) <= 1);
    });
}

/// Dropped claims are published as cancelled and skipped: the consumer sees only the
/// published messages, in order, and the ring never stalls on the abandoned slots.
#[test]
fn cancelled_claims_are_skipped() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            let abandoned = loop {
                match producer.try_claim(1) {
                    Ok(claim) => break claim,
                    Err(_) => thread::yield_now(),
                }
            };
            fill(&abandoned, 0, 1, 99);
            drop(abandoned);
            send(&producer, 1, 1);
            let pair = loop {
                match producer.try_claim(2) {
                    Ok(claim) => break claim,
                    Err(ClaimError::Full { .. }) => thread::yield_now(),
                    Err(other) => panic!("unexpected claim error {other:?}"),
                }
            };
            pair.cancel();
            send(&producer, 1, 2);
        });
        let mut got = Vec::new();
        let mut released = 0;
        while got.len() < 2 {
            let n = consumer.consume(2, |slot| {
                got.push(decode(&slot));
                Step::Next
            });
            if n == 0 {
                thread::yield_now();
            }
            released += n;
        }
        sender.join().expect("producer thread");
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(got.iter().map(|g| g.position).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(
            released, 5,
            "cancelled positions are released with the messages"
        );
        assert!(consumer.is_empty());
    });
}

/// A third thread reads the gauges while one thread sends and consumes in turn, so at
/// most one message is ever in the two-slot ring. However the observer's loads interleave
/// with the cursors' moves (the consumer passing the `tail` it already read included),
/// `len` never says more than 1 and `free` never less than 1. `exclusive` sends through
/// `try_claim_exclusive` (a plain store of `tail`) instead of the compare-and-swap.
fn observer_model(exclusive: bool) {
    loom::model(move || {
        let (producer, mut consumer) = ring(2, u32::MAX);
        let observer = {
            let producer = Arc::clone(&producer);
            thread::spawn(move || {
                let len = producer.len();
                assert!(len <= 1, "Producer::len() = {len} with at most 1 in flight");
                let free = producer.free();
                assert!(
                    free >= 1,
                    "Producer::free() = {free} with at most 1 in flight"
                );
            })
        };
        for value in 0..2 {
            if exclusive {
                // SAFETY: this thread is the only one that claims.
                let claim = unsafe { producer.try_claim_exclusive(1) }.expect("room for one");
                fill(&claim, 0, 1, value);
                claim.publish();
            } else {
                send(&producer, 1, value);
            }
            let got = receive(&mut consumer, 1, 1);
            assert_eq!(got[0].value, value);
        }
        observer.join().expect("observer thread");
        assert!(producer.is_empty());
        assert_eq!(producer.free(), 2);
    });
}

#[test]
fn observer_never_overcounts() {
    observer_model(false);
}

#[test]
fn observer_never_overcounts_exclusive() {
    observer_model(true);
}

/// `push_exclusive` of `value` from `sender`: the body `fill` writes, in one call.
///
/// # Safety
/// The caller is the ring's only producer thread (`close` may race it).
unsafe fn push(producer: &Producer<Mem>, sender: u32, value: u32) -> Result<(), ClaimError> {
    // SAFETY: the caller's guarantee.
    unsafe {
        producer.push_exclusive(
            make_tag(KIND_MESSAGE, sender),
            [value, !value],
            &value.to_le_bytes(),
        )
    }
}

/// `push_exclusive` (store `tail`, write, stamp, with no `Claim` in between) from the only
/// producer through a ring of two slots, three messages: the producer waits on the full
/// edge; the consumer gets every message once, in order, intact, at consecutive positions.
#[test]
fn push_exclusive_spsc_through_the_full_edge() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            for value in 1..=3 {
                loop {
                    // SAFETY: this thread is the ring's only producer.
                    match unsafe { push(&producer, 7, value) } {
                        Ok(()) => break,
                        Err(ClaimError::Full { free: 0 }) => thread::yield_now(),
                        Err(other) => panic!("unexpected push error {other:?}"),
                    }
                }
            }
        });
        let got = receive(&mut consumer, 3, 2);
        sender.join().expect("producer thread");
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            got.iter().map(|g| g.position).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(got.iter().all(|g| g.sender == 7));
        assert!(consumer.is_empty());
    });
}

/// `push_exclusive` racing `close` (the same light/heavy fence pair as
/// `close_races_an_exclusive_claim`): after `wait_published` on the closing tail, the
/// messages consumed are exactly the pushes that returned `Ok`, and a push that returned
/// `Closed` left nothing past that tail but, at most, a cancelled slot.
#[test]
fn close_races_push_exclusive() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let closer = Arc::clone(&producer);
        let sender = thread::spawn(move || {
            let mut sent = Vec::new();
            for value in 1..=2 {
                // SAFETY: this thread is the ring's only producer; `close` may race it.
                match unsafe { push(&producer, 1, value) } {
                    Ok(()) => sent.push(value),
                    Err(ClaimError::Closed) => break,
                    Err(other) => panic!("two messages fit two slots, got {other:?}"),
                }
            }
            sent
        });
        let tail = closer.close();
        check_closed_at(&mut consumer, tail, sender);
        // SAFETY: the sender thread is joined: this thread is the only producer now.
        let after = unsafe { push(&closer, 1, 3) };
        assert_eq!(after.err(), Some(ClaimError::Closed));
        assert!(
            consumer.head().wrapping_sub(tail) <= 1,
            "head {} tail {tail}: more than one cancelled slot after the close",
            consumer.head()
        );
    });
}

/// Reads the run `ready_run(max)` finds, all of it, in place; releases its first message
/// and reads the rest again (shifted by one) to check nothing moved; then releases the
/// rest. Returns the messages of the run (empty when nothing was ready).
fn take_run(consumer: &mut Consumer<Mem>, max: u32) -> Vec<Got> {
    let n = consumer.ready_run(max);
    assert!(n <= max, "a run of {n} for at most {max}");
    let mut run = Vec::new();
    consumer.read_run(0, n, |i, slot| {
        assert_eq!(
            i as usize,
            run.len(),
            "read_run hands messages over in order"
        );
        run.push(decode(&slot));
    });
    if n > 0 {
        consumer.release_run(1);
        for i in 1..n {
            let again = consumer.with_run_slot(i - 1, |slot| decode(&slot));
            assert_eq!(
                again, run[i as usize],
                "a held message changed under the run"
            );
        }
        consumer.release_run(n - 1);
    }
    run
}

/// A consumer reading runs in place (`ready_run`, `with_run_slot`) and releasing them
/// later (`release_run`) while the producer sends three messages through two slots:
/// every message arrives once, in order, at consecutive positions, and the producer never
/// writes a slot of a run before it is released (loom's cell tracking fails the model on
/// a write racing the in-place reads; a stale or torn slot fails `decode`).
#[test]
fn ready_run_holds_messages_until_released() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            for value in 1..=3 {
                send(&producer, 5, value);
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let run = take_run(&mut consumer, 2);
            if run.is_empty() {
                thread::yield_now();
            }
            got.extend(run);
        }
        sender.join().expect("producer thread");
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            got.iter().map(|g| g.position).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(consumer.is_empty());
        assert_eq!(consumer.ready_run(2), 0);
    });
}

/// Batches both ways: the producer writes claims of two with `write_run` (the first of
/// them in two calls, as a source that runs dry and resumes), the consumer reads runs in
/// one pass (`read_run`) and releases them late: four messages through two slots arrive
/// once and in order, and loom's cell tracking sees no write racing a read.
#[test]
fn runs_written_and_read_in_one_pass() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            for pair in [[1u32, 2], [3, 4]] {
                let claim = loop {
                    match producer.try_claim(2) {
                        Ok(claim) => break claim,
                        Err(ClaimError::Full { .. }) => thread::yield_now(),
                        Err(other) => panic!("unexpected claim error {other:?}"),
                    }
                };
                let write = |from: u32, to: u32| {
                    claim.write_run(from, |i, payload| {
                        (i < to).then(|| {
                            let value = pair[i as usize];
                            payload[..4].copy_from_slice(&value.to_le_bytes());
                            (make_tag(KIND_MESSAGE, 7), [value, !value])
                        })
                    })
                };
                if pair[0] == 1 {
                    assert_eq!(write(0, 1), 1);
                    assert_eq!(write(1, 2), 2);
                } else {
                    assert_eq!(write(0, 2), 2);
                }
                claim.publish();
            }
        });
        let mut got = Vec::new();
        while got.len() < 4 {
            let run = take_run(&mut consumer, 2);
            if run.is_empty() {
                thread::yield_now();
            }
            got.extend(run);
        }
        sender.join().expect("producer thread");
        assert_eq!(
            got.iter().map(|g| g.value).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(got.iter().all(|g| g.sender == 7));
        assert!(consumer.is_empty());
    });
}

/// Runs around cancelled slots, with the producer concurrent: a cancelled slot in front
/// of a run is released on the way, one after a message ends the run, and only messages
/// are ever handed over, in order.
#[test]
fn ready_run_skips_cancelled_slots() {
    loom::model(|| {
        let (producer, mut consumer) = ring(2, 0);
        let sender = thread::spawn(move || {
            send(&producer, 1, 1);
            let abandoned = loop {
                match producer.try_claim(1) {
                    Ok(claim) => break claim,
                    Err(ClaimError::Full { .. }) => thread::yield_now(),
                    Err(other) => panic!("unexpected claim error {other:?}"),
                }
            };
            drop(abandoned);
            send(&producer, 1, 2);
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            let run = take_run(&mut consumer, 2);
            // The run stops at the cancelled position 1: never 1 and 2 in one run.
            assert!(run.len() <= 1, "a run across a cancelled slot: {run:?}");
            if run.is_empty() {
                thread::yield_now();
            }
            got.extend(run);
        }
        sender.join().expect("producer thread");
        assert_eq!(got.iter().map(|g| g.value).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(got.iter().map(|g| g.position).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(consumer.head(), 3, "the cancelled slot is released too");
        assert!(consumer.is_empty());
    });
}
