//! Property tests of the ring against a `VecDeque` model, single-threaded: random
//! sequences of claims (published, cancelled or held open), batch consumes with
//! `Step::Keep`/`Step::Last`, and closes, on rings of random small capacity, slot size
//! and origin (origins near `u32::MAX` included, so cursors cross the wrap).
//!
//! After every operation the ring must agree with the model: what was consumed, which
//! claims failed with `Full` (exactly when the model lacks the space) and every gauge.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::Arc;

use gyre_runtime::abi::{make_tag, KIND_CANCELLED, KIND_MESSAGE, PAYLOAD_ALIGN, SLOT_HEADER_BYTES};
use gyre_runtime::ring::{
    Claim, ClaimError, Consumer, HalfTaken, HostRing, LayoutError, Producer, RingLayout, Step,
};
use proptest::prelude::*;

/// The payload byte at `offset` of the message at `position` (with the message's `seed`).
fn pattern(position: u32, seed: u32, offset: usize) -> u8 {
    let mixed =
        position.rotate_left(7) ^ seed.wrapping_mul(0x9E37_79B9) ^ (offset as u32 * 0x0101_0101);
    (mixed ^ (mixed >> 13)) as u8
}

type Ring = Arc<HostRing>;

/// A message as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Message {
    position: u32,
    tag: u32,
    seed: u32,
}

/// What the model holds at one position between `head` and `tail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Claimed and written, not published yet (a held claim).
    Pending(Message),
    /// Published message.
    Published(Message),
    /// Published as cancelled.
    Cancelled,
}

#[derive(Clone, Debug)]
enum Op {
    /// Claim `len` slots, write them, then publish (or drop, when `cancel`).
    Claim {
        len: u32,
        cancel: bool,
        kind: u32,
        seed: u32,
    },
    /// Claim `len` slots, write them and keep the claim open.
    Hold { len: u32, kind: u32, seed: u32 },
    /// Publish (or cancel) the held claim at `index` modulo the number held.
    Finish { index: usize, cancel: bool },
    /// Consume at most `max`; answer `Keep` at message `keep`, `Last` at message `last`.
    Consume {
        max: u32,
        keep: Option<usize>,
        last: Option<usize>,
    },
    /// Find the run at the front (`ready_run(max)`), read messages `from..` of it in
    /// one pass (`read_run`), release `release` of them (`release_run`).
    Run { max: u32, from: u32, release: u32 },
    /// Close the producer side.
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let len = 0u32..=9;
    let kind = 0u32..KIND_CANCELLED;
    prop_oneof![
        4 => (len.clone(), proptest::bool::weighted(0.2), kind.clone(), any::<u32>())
            .prop_map(|(len, cancel, kind, seed)| Op::Claim { len, cancel, kind, seed }),
        1 => (len, kind, any::<u32>()).prop_map(|(len, kind, seed)| Op::Hold { len, kind, seed }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(index, cancel)| Op::Finish { index, cancel }),
        4 => (0u32..=10, proptest::option::weighted(0.2, 0usize..6), proptest::option::weighted(0.2, 0usize..6))
            .prop_map(|(max, keep, last)| Op::Consume { max, keep, last }),
        2 => (0u32..=10, 0u32..=4, 0u32..=10)
            .prop_map(|(max, from, release)| Op::Run { max, from, release }),
        1 => Just(Op::Close),
    ]
}

fn origin() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), (u32::MAX - 40)..=u32::MAX, any::<u32>()]
}

/// The ring under test and its model.
struct Harness<'p> {
    producer: &'p Producer<Ring>,
    consumer: Consumer<Ring>,
    held: Vec<(Claim<'p, Ring>, u32)>,
    entries: VecDeque<Entry>,
    head: u32,
    tail: u32,
    closed: bool,
    capacity: u32,
    payload_bytes: usize,
}

impl<'p> Harness<'p> {
    fn used(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }

    /// Claims like the model says it must, writes the slots, returns the claim.
    fn claim(&mut self, len: u32, kind: u32, seed: u32) -> Option<Claim<'p, Ring>> {
        let got = self.producer.try_claim(len);
        let free = self.capacity - self.used();
        let expected = if len > self.capacity {
            Err(ClaimError::TooMany)
        } else if self.closed {
            Err(ClaimError::Closed)
        } else if free < len {
            Err(ClaimError::Full { free })
        } else {
            Ok(self.tail)
        };
        assert_eq!(
            got.as_ref().map(Claim::start).map_err(|e| *e),
            expected,
            "try_claim({len})"
        );
        let claim = got.ok()?;
        assert_eq!(claim.len(), len);
        let payload_bytes = self.payload_bytes;
        let fill = |position: u32, payload: &mut [u8]| {
            assert_eq!(payload.len(), payload_bytes);
            assert_eq!(payload.as_ptr() as usize % PAYLOAD_ALIGN as usize, 0);
            for (offset, byte) in payload.iter_mut().enumerate() {
                *byte = pattern(position, seed, offset);
            }
        };
        let header = |position: u32| (make_tag(kind, position & 0xFFFF), [position, seed]);
        if seed.is_multiple_of(2) {
            for i in 0..len {
                let position = self.tail.wrapping_add(i);
                let (tag, corr) = header(position);
                claim.write(i, tag, corr, |payload| fill(position, payload));
            }
        } else {
            // The run form, in two parts: the first stops at `split` (its source ran
            // dry there), the second writes the rest from `split` on.
            let split = (seed / 2) % (len + 1);
            let start = self.tail;
            let run = |from: u32, to: u32| {
                claim.write_run(from, |i, payload| {
                    assert!(i >= from, "write_run({from}) asked for slot {i}");
                    (i < to).then(|| {
                        let position = start.wrapping_add(i);
                        fill(position, payload);
                        header(position)
                    })
                })
            };
            assert_eq!(
                run(0, split),
                split,
                "write_run stops where its source does"
            );
            assert_eq!(run(split, len), len, "write_run writes to the end");
        }
        for i in 0..len {
            let position = self.tail.wrapping_add(i);
            let (tag, _) = header(position);
            self.entries.push_back(Entry::Pending(Message {
                position,
                tag,
                seed,
            }));
        }
        self.tail = self.tail.wrapping_add(len);
        Some(claim)
    }

    /// Marks the model's entries of the claim starting at `start` finished.
    fn finish(&mut self, start: u32, len: u32, cancel: bool) {
        for i in 0..len {
            let at = start.wrapping_add(i).wrapping_sub(self.head) as usize;
            let Entry::Pending(message) = self.entries[at] else {
                panic!("model: position {} was not pending", start.wrapping_add(i));
            };
            self.entries[at] = if cancel {
                Entry::Cancelled
            } else {
                Entry::Published(message)
            };
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Claim {
                len,
                cancel,
                kind,
                seed,
            } => {
                if let Some(claim) = self.claim(len, kind, seed) {
                    let start = claim.start();
                    if cancel {
                        drop(claim);
                    } else {
                        claim.publish();
                    }
                    self.finish(start, len, cancel);
                }
            }
            Op::Hold { len, kind, seed } => {
                if let Some(claim) = self.claim(len, kind, seed) {
                    self.held.push((claim, len));
                }
            }
            Op::Finish { index, cancel } => {
                if !self.held.is_empty() {
                    let (claim, len) = self.held.swap_remove(index % self.held.len());
                    let start = claim.start();
                    if cancel {
                        claim.cancel();
                    } else {
                        claim.publish();
                    }
                    self.finish(start, len, cancel);
                }
            }
            Op::Consume { max, keep, last } => self.consume(max, keep, last),
            Op::Run { max, from, release } => self.run(max, from, release),
            Op::Close => {
                assert_eq!(self.producer.close(), self.tail, "close returns the tail");
                self.closed = true;
            }
        }
    }

    fn consume(&mut self, max: u32, keep: Option<usize>, last: Option<usize>) {
        // What the model says: walk from the front, skipping cancelled entries.
        let mut expected_seen = Vec::new();
        let mut expected_taken = 0;
        // `max` counts messages handed over; cancelled slots are released on the way.
        for entry in &self.entries {
            if expected_seen.len() as u32 == max {
                break;
            }
            match *entry {
                Entry::Pending(_) => break,
                Entry::Cancelled => expected_taken += 1,
                Entry::Published(message) => {
                    let index = expected_seen.len();
                    expected_seen.push(message);
                    if keep == Some(index) {
                        break;
                    }
                    expected_taken += 1;
                    if last == Some(index) {
                        break;
                    }
                }
            }
        }

        let mut seen = Vec::new();
        let payload_bytes = self.payload_bytes;
        let taken = self.consumer.consume(max, |slot| {
            let index = seen.len();
            let message = Message {
                position: slot.position,
                tag: slot.tag,
                seed: slot.corr[1],
            };
            assert_eq!(
                slot.corr[0], slot.position,
                "correlation word 0 carries the position"
            );
            assert_eq!(slot.payload.len(), payload_bytes);
            for (offset, byte) in slot.payload.iter().enumerate() {
                assert_eq!(
                    *byte,
                    pattern(slot.position, message.seed, offset),
                    "payload byte {offset}"
                );
            }
            seen.push(message);
            if keep == Some(index) {
                Step::Keep
            } else if last == Some(index) {
                Step::Last
            } else {
                Step::Next
            }
        });
        assert_eq!(seen, expected_seen, "messages handed to consume({max})");
        assert_eq!(
            taken, expected_taken,
            "positions released by consume({max})"
        );
        for _ in 0..taken {
            self.entries.pop_front();
        }
        self.head = self.head.wrapping_add(taken);
    }

    /// Checks one message handed over in place against the model's.
    fn check_slot(&self, slot: &gyre_runtime::ring::SlotRef<'_>, expected: Message) {
        let message = Message {
            position: slot.position,
            tag: slot.tag,
            seed: slot.corr[1],
        };
        assert_eq!(message, expected, "message at {}", slot.position);
        assert_eq!(slot.corr[0], slot.position);
        assert_eq!(slot.payload.len(), self.payload_bytes);
        for (offset, byte) in slot.payload.iter().enumerate() {
            assert_eq!(*byte, pattern(slot.position, message.seed, offset));
        }
    }

    fn run(&mut self, max: u32, from: u32, release: u32) {
        // The model: cancelled entries at the front are released, then the run is the
        // published messages up to `max`, ending at a pending or cancelled entry.
        let skipped = self
            .entries
            .iter()
            .take_while(|e| matches!(e, Entry::Cancelled))
            .count();
        for _ in 0..skipped {
            self.entries.pop_front();
        }
        self.head = self.head.wrapping_add(skipped as u32);
        let expected: Vec<Message> = self
            .entries
            .iter()
            .map_while(|e| match *e {
                Entry::Published(message) => Some(message),
                _ => None,
            })
            .take(max as usize)
            .collect();
        let n = self.consumer.ready_run(max);
        assert_eq!(n as usize, expected.len(), "ready_run({max})");
        assert_eq!(
            self.consumer.head(),
            self.head,
            "ready_run releases cancelled slots"
        );
        let from = from.min(n);
        let mut next = from;
        let consumer = &self.consumer;
        consumer.read_run(from, n, |i, slot| {
            assert_eq!(i, next, "read_run hands messages over in order");
            self.check_slot(&slot, expected[i as usize]);
            next += 1;
        });
        assert_eq!(next, n, "read_run({from}, {n}) handed over every message");
        let release = release.min(n);
        self.consumer.release_run(release);
        for _ in 0..release {
            self.entries.pop_front();
        }
        self.head = self.head.wrapping_add(release);
    }

    fn check(&self) {
        assert_eq!(self.consumer.head(), self.head);
        assert_eq!(self.entries.len() as u32, self.used());
        let published = matches!(
            self.entries.front(),
            Some(Entry::Published(_) | Entry::Cancelled)
        );
        assert_eq!(self.consumer.is_empty(), !published, "Consumer::is_empty");
        assert_eq!(
            self.producer.has_published(),
            published,
            "Producer::has_published"
        );
        assert_eq!(self.producer.len(), self.used(), "Producer::len");
        assert_eq!(
            self.producer.is_empty(),
            self.used() == 0,
            "Producer::is_empty"
        );
        assert_eq!(
            self.producer.free(),
            self.capacity - self.used(),
            "Producer::free"
        );
        assert_eq!(self.producer.is_closed(), self.closed);
        if self.closed {
            // With a zero budget the wait only reports: true iff nothing is held open.
            let all = !self.entries.iter().any(|e| matches!(e, Entry::Pending(_)));
            assert_eq!(
                self.consumer.wait_published(self.tail, 0),
                all,
                "Consumer::wait_published"
            );
            assert_eq!(
                self.producer.wait_published(self.tail, 0),
                all,
                "Producer::wait_published"
            );
        }
    }
}

fn run(capacity: u32, slot_bytes: u32, origin: u32, ops: &[Op]) {
    let layout = RingLayout::new(capacity, slot_bytes).expect("valid layout");
    let ring = Arc::new(HostRing::with_origin(layout, origin));
    let producer = Producer::new(Arc::clone(&ring)).expect("the ring's first producer");
    let mut harness = Harness {
        producer: &producer,
        consumer: Consumer::new(ring).expect("the ring's first consumer"),
        held: Vec::new(),
        entries: VecDeque::new(),
        head: origin,
        tail: origin,
        closed: false,
        capacity,
        payload_bytes: (slot_bytes - SLOT_HEADER_BYTES) as usize,
    };
    harness.check();
    for op in ops {
        harness.apply(op);
        harness.check();
    }
    // Held claims dropped at the end are cancelled: then everything drains.
    let held: Vec<_> = harness.held.drain(..).collect();
    for (claim, len) in held {
        let start = claim.start();
        drop(claim);
        harness.finish(start, len, true);
    }
    harness.consume(u32::MAX, None, None);
    harness.check();
    assert!(
        harness.entries.is_empty(),
        "everything published was consumed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ring_matches_model(
        capacity in (0u32..=5).prop_map(|k| 1 << k),
        slot_bytes in prop_oneof![Just(32u32), Just(64), Just(128)],
        origin in origin(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(capacity, slot_bytes, origin, &ops);
    }

    /// `RingLayout::new` accepts exactly the power-of-two capacities up to 2^30 and the
    /// power-of-two slot sizes from 32 to 65536 bytes.
    #[test]
    fn layout_accepts_exactly_the_valid(capacity in any::<u32>(), slot_bytes in any::<u32>()) {
        let shift_capacity = 1u32 << (capacity % 32);
        let shift_slot = 1u32 << (slot_bytes % 32);
        for (c, s) in [(capacity, slot_bytes), (shift_capacity, slot_bytes), (shift_capacity, shift_slot), (capacity, shift_slot)] {
            let fits = usize::try_from(u64::from(c) * u64::from(s) + 384).is_ok();
            let valid = c.is_power_of_two()
                && c <= 1 << 30
                && s.is_power_of_two()
                && (32..=65536).contains(&s)
                && fits;
            let got = RingLayout::new(c, s);
            prop_assert_eq!(got.is_ok(), valid, "RingLayout::new({}, {}) = {:?}", c, s, got);
            match got {
                Ok(layout) => {
                    prop_assert_eq!((layout.capacity(), layout.slot_bytes()), (c, s));
                    prop_assert_eq!(layout.payload_bytes(), s - 16);
                    prop_assert_eq!(layout.region_bytes(), 384 + c as usize * s as usize);
                }
                Err(error) => check_advice(c, &error.to_string()),
            }
        }
    }
}

/// A capacity the message of a refused layout advises must itself be accepted.
fn check_advice(capacity: u32, message: &str) {
    if let Some((_, advice)) = message.split_once("round it to ") {
        let digits: String = advice.chars().take_while(char::is_ascii_digit).collect();
        let advised: u32 = digits.parse().expect("a capacity follows 'round it to'");
        assert!(advised >= capacity.min(1 << 30), "{message:?}");
        assert!(
            RingLayout::new(advised, 64).is_ok(),
            "{message:?} advises a refused capacity"
        );
    }
}

/// Every refusal names the problem and says what to do instead.
#[test]
fn layout_errors_say_what_to_do() {
    let cases: [(u32, u32, LayoutError, &[&str]); 8] = [
        (
            0,
            64,
            LayoutError::ZeroCapacity,
            &["capacity is 0", "power of two", "1024"],
        ),
        (
            3,
            64,
            LayoutError::CapacityNotPowerOfTwo(3),
            &["3", "not a power of two", "round it to 4"],
        ),
        (
            1000,
            64,
            LayoutError::CapacityNotPowerOfTwo(1000),
            &["round it to 1024"],
        ),
        (
            1 << 31,
            64,
            LayoutError::CapacityTooLarge(1 << 31),
            &["2147483648", "maximum of 2^30"],
        ),
        (
            8,
            0,
            LayoutError::BadSlotBytes(0),
            &["slot size 0", "power of two from 32 to 65536"],
        ),
        (
            8,
            16,
            LayoutError::BadSlotBytes(16),
            &["slot size 16", "16 of them are the slot header"],
        ),
        (
            8,
            96,
            LayoutError::BadSlotBytes(96),
            &["96", "power of two"],
        ),
        (
            8,
            1 << 17,
            LayoutError::BadSlotBytes(1 << 17),
            &["131072", "65536"],
        ),
    ];
    for (capacity, slot_bytes, error, phrases) in cases {
        let got = RingLayout::new(capacity, slot_bytes);
        assert_eq!(got, Err(error), "RingLayout::new({capacity}, {slot_bytes})");
        let message = error.to_string();
        for phrase in phrases {
            assert!(message.contains(phrase), "{message:?} lacks {phrase:?}");
        }
    }
    // Capacities above 2^30 that are not powers of two: the message must neither panic
    // (rounding up overflows u32) nor advise a capacity that is then refused.
    for capacity in [(1 << 30) + 1, 3_000_000_000, u32::MAX] {
        let error = RingLayout::new(capacity, 64).expect_err("too large");
        assert_eq!(error, LayoutError::CapacityTooLarge(capacity));
        check_advice(capacity, &error.to_string());
    }
}

/// The edges without a model: an empty ring yields nothing, a full one refuses, a claim
/// larger than the ring is refused whatever its state, and `TooMany` wins over `Closed`.
#[test]
fn edges() {
    let ring = Arc::new(HostRing::with_origin(
        RingLayout::new(4, 32).expect("layout"),
        u32::MAX - 1,
    ));
    let producer = Producer::new(Arc::clone(&ring)).expect("the ring's first producer");
    let mut consumer = Consumer::new(ring).expect("the ring's first consumer");
    assert_eq!(consumer.consume(8, |_| panic!("nothing to consume")), 0);
    assert!(consumer.is_empty() && producer.is_empty());
    for _ in 0..4 {
        producer.try_claim(1).expect("room").publish();
    }
    assert_eq!(
        producer.try_claim(1).err(),
        Some(ClaimError::Full { free: 0 })
    );
    assert_eq!(producer.try_claim(5).err(), Some(ClaimError::TooMany));
    assert_eq!(
        consumer.consume(1, |slot| {
            assert_eq!(slot.position, u32::MAX - 1);
            Step::Next
        }),
        1
    );
    assert_eq!(
        producer.try_claim(2).err(),
        Some(ClaimError::Full { free: 1 })
    );
    let claim = producer.try_claim(1).expect("one slot free");
    assert_eq!(claim.start(), 2, "positions wrap past u32::MAX");
    claim.publish();
    assert_eq!(producer.close(), 3);
    assert_eq!(producer.try_claim(5).err(), Some(ClaimError::TooMany));
    assert_eq!(producer.try_claim(1).err(), Some(ClaimError::Closed));
    let mut positions = Vec::new();
    consumer.consume(u32::MAX, |slot| {
        positions.push(slot.position);
        Step::Next
    });
    assert_eq!(positions, [u32::MAX, 0, 1, 2]);
}

/// A ring hands out one producer and one consumer: a second of either is refused while
/// the first lives (two consumers would race on slot bodies), and can be made once the
/// first is dropped, taking over where it stopped.
#[test]
fn one_producer_and_one_consumer_per_ring() {
    let ring = Arc::new(HostRing::new(RingLayout::new(4, 32).expect("layout")));
    let producer = Producer::new(Arc::clone(&ring)).expect("the ring's first producer");
    let consumer = Consumer::new(Arc::clone(&ring)).expect("the ring's first consumer");
    assert_eq!(
        Consumer::new(Arc::clone(&ring)).err(),
        Some(HalfTaken::Consumer)
    );
    assert_eq!(
        Producer::new(Arc::clone(&ring)).err(),
        Some(HalfTaken::Producer)
    );
    let text = HalfTaken::Consumer.to_string();
    assert!(
        text.contains("already has a consumer") && text.contains("drop it"),
        "{text}"
    );
    assert!(HalfTaken::Producer.to_string().contains("share that one"));

    producer.try_claim(1).expect("room").publish();
    drop(consumer);
    let mut consumer = Consumer::new(Arc::clone(&ring)).expect("the first one was dropped");
    drop(producer);
    let producer = Producer::new(Arc::clone(&ring)).expect("the first one was dropped");
    producer.try_claim(1).expect("room").publish();
    assert_eq!(consumer.consume(u32::MAX, |_| Step::Next), 2);

    // `split` moves the ring in, so it cannot fail.
    let (producer, mut consumer) = HostRing::new(RingLayout::new(4, 32).expect("layout")).split();
    producer.try_claim(1).expect("room").publish();
    assert_eq!(consumer.consume(1, |_| Step::Next), 1);
}

/// Cancelled slots do not count against `consume`'s `max`: `consume(1)` hands over the
/// message behind them. `is_empty` is false while a cancelled slot is next (consume would
/// release it).
#[test]
fn cancelled_slots_do_not_count_against_max() {
    let (producer, mut consumer) = HostRing::new(RingLayout::new(8, 32).expect("layout")).split();
    producer.try_claim(2).expect("room").cancel();
    assert!(!consumer.is_empty(), "cancelled slots wait to be released");
    let mut got = Vec::new();
    assert_eq!(
        consumer.consume(1, |_| Step::Next),
        2,
        "both cancelled released"
    );
    assert!(consumer.is_empty());
    producer.try_claim(3).expect("room").cancel();
    let claim = producer.try_claim(2).expect("room");
    claim.write(0, make_tag(KIND_MESSAGE, 0), [10, 0], |_| {});
    claim.write(1, make_tag(KIND_MESSAGE, 0), [11, 0], |_| {});
    claim.publish();
    let released = consumer.consume(1, |slot| {
        got.push(slot.corr[0]);
        Step::Next
    });
    assert_eq!(got, [10], "one message, behind three cancelled slots");
    assert_eq!(released, 4);
    assert_eq!(consumer.consume(0, |_| panic!("max 0 hands nothing")), 0);
}

/// `ClaimError` says what happened and what to do.
#[test]
fn claim_errors_display() {
    let full = ClaimError::Full { free: 3 }.to_string();
    assert!(full.contains("full") && full.contains("3 slots free") && full.contains("wait"));
    assert!(ClaimError::Closed
        .to_string()
        .contains("hand the message back"));
    assert!(ClaimError::TooMany.to_string().contains("capacity()"));
}
