//! Stress tests of the ring with real threads: several producers sharing one `Producer`
//! (claiming one to three slots at a time) and one consumer taking batches, on a small
//! ring so that both the full and the empty edge are hit constantly.
//!
//! Every message carries its producer's id (tag) and sequence number (correlation id and
//! payload), so the consumer checks exactly-once delivery and each producer's order.
//! Waiting threads yield rather than spin: CI machines have two cores.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use gyre_runtime::abi::{make_tag, KIND_MESSAGE, TAG_KIND_MASK, TAG_SENDER_SHIFT};
use gyre_runtime::ring::{ClaimError, Consumer, HostRing, Producer, RingLayout, Step};

type Ring = Arc<HostRing>;

const CAPACITY: u32 = 64;

/// Messages per producer: fewer in debug builds, so each test stays within seconds.
fn per_producer() -> u32 {
    if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    }
}

fn ring(origin: u32) -> (Arc<Producer<Ring>>, Consumer<Ring>) {
    let layout = RingLayout::new(CAPACITY, 64).expect("valid layout");
    let (producer, consumer) = HostRing::with_origin(layout, origin).split();
    (Arc::new(producer), consumer)
}

/// Payload word `i` of message `seq` from producer `id`.
fn word(id: u32, seq: u32, i: u32) -> u32 {
    seq.wrapping_mul(0x9E37_79B9) ^ id.rotate_left(16) ^ i
}

/// Sends `count` messages as producer `id`, in claims of one to three slots, until done
/// or the ring is closed. Returns how many were sent (claims that returned `Ok`).
fn produce(producer: &Producer<Ring>, id: u32, count: u32) -> u32 {
    let mut seq = 0;
    while seq < count {
        let len = (1 + seq % 3).min(count - seq);
        match producer.try_claim(len) {
            Ok(claim) => {
                for i in 0..len {
                    let s = seq + i;
                    claim.write(i, make_tag(KIND_MESSAGE, id), [s, !s], |payload| {
                        for (n, chunk) in payload.chunks_exact_mut(4).take(4).enumerate() {
                            chunk.copy_from_slice(&word(id, s, n as u32).to_le_bytes());
                        }
                    });
                }
                claim.publish();
                seq += len;
            }
            Err(ClaimError::Full { free }) => {
                assert!(free < len, "Full with {free} free for a claim of {len}");
                // A racy gauge, but never more than the ring holds.
                assert!(producer.free() <= CAPACITY);
                thread::yield_now();
            }
            Err(ClaimError::Closed) => break,
            Err(ClaimError::TooMany) => unreachable!("claims of at most three slots"),
        }
    }
    seq
}

/// The consumer's bookkeeping: the next sequence number expected from each producer.
struct Tally {
    next: Vec<u32>,
    total: u64,
}

impl Tally {
    fn new(producers: usize) -> Self {
        Self {
            next: vec![0; producers],
            total: 0,
        }
    }

    /// Consumes one batch, checking each message. Returns the positions released.
    fn batch(&mut self, consumer: &mut Consumer<Ring>, max: u32) -> u32 {
        consumer.consume(max, |slot| {
            assert_eq!(slot.tag & TAG_KIND_MASK, KIND_MESSAGE);
            let id = slot.tag >> TAG_SENDER_SHIFT;
            let seq = slot.corr[0];
            assert_eq!(slot.corr[1], !seq, "torn correlation id");
            for (n, chunk) in slot.payload.chunks_exact(4).take(4).enumerate() {
                let got = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
                assert_eq!(got, word(id, seq, n as u32), "torn payload of {id}/{seq}");
            }
            let next = &mut self.next[id as usize];
            assert_eq!(seq, *next, "producer {id}: got {seq}, expected {next}");
            *next += 1;
            self.total += 1;
            Step::Next
        })
    }
}

/// `producers` threads send `per_producer()` messages each through a ring starting at
/// `origin`; the consumer takes batches of up to 16 and must see everything once, in
/// each producer's order.
fn stress(producers: u32, origin: u32) {
    let count = per_producer();
    let (producer, mut consumer) = ring(origin);
    let senders: Vec<_> = (0..producers)
        .map(|id| {
            let producer = Arc::clone(&producer);
            thread::spawn(move || produce(&producer, id, count))
        })
        .collect();
    let expected = u64::from(producers) * u64::from(count);
    let reader = thread::spawn(move || {
        let mut tally = Tally::new(producers as usize);
        while tally.total < expected {
            if tally.batch(&mut consumer, 16) == 0 {
                thread::yield_now();
            }
        }
        (tally, consumer)
    });
    for sender in senders {
        assert_eq!(sender.join().expect("producer thread"), count);
    }
    let (tally, consumer) = reader.join().expect("consumer thread");
    assert_eq!(tally.next, vec![count; producers as usize]);
    assert!(consumer.is_empty() && producer.is_empty());
    assert_eq!(consumer.head(), origin.wrapping_add(expected as u32));
}

#[test]
fn two_producers() {
    stress(2, 0);
}

#[test]
fn three_producers() {
    stress(3, 0);
}

#[test]
fn three_producers_across_the_wrap() {
    stress(3, u32::MAX - 1000);
}

/// A closer thread closes the ring mid-stream while three producers send and the
/// consumer consumes, then waits on the producer side for claims made before the close.
/// The consumer, given the closing tail, waits on its side too and drains. Messages
/// consumed must equal the sends that returned `Ok`, per producer and in order.
#[test]
fn close_mid_stream() {
    let producers = 3;
    let count = per_producer();
    let (producer, mut consumer) = ring(u32::MAX - 500);
    let consumed = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..producers)
        .map(|id| {
            let producer = Arc::clone(&producer);
            thread::spawn(move || produce(&producer, id, count))
        })
        .collect();

    let (tail_tx, tail_rx) = mpsc::channel();
    let closer = {
        let producer = Arc::clone(&producer);
        let consumed = Arc::clone(&consumed);
        thread::spawn(move || {
            while consumed.load(Ordering::Relaxed) < u64::from(count) {
                thread::yield_now();
            }
            let tail = producer.close();
            tail_tx.send(tail).expect("consumer listens");
            // The producer side's own wait, racing the consumer and late claims.
            assert!(
                producer.wait_published(tail, u32::MAX),
                "claims before the close stay unpublished"
            );
            tail
        })
    };

    let reader = thread::spawn(move || {
        let mut tally = Tally::new(producers as usize);
        let tail = loop {
            if tally.batch(&mut consumer, 16) == 0 {
                thread::yield_now();
            }
            consumed.store(tally.total, Ordering::Relaxed);
            if let Ok(tail) = tail_rx.try_recv() {
                break tail;
            }
        };
        while !consumer.wait_published(tail, 1 << 16) {
            thread::yield_now();
        }
        // Everything before `tail` is published: drain it (and any cancelled claim that
        // raced the close and landed after it).
        while tally.batch(&mut consumer, 16) != 0 {}
        assert!(
            consumer.head().wrapping_sub(tail) <= producers,
            "head ran far past the tail"
        );
        (tally, consumer, tail)
    });

    let sent: Vec<u32> = senders
        .into_iter()
        .map(|s| s.join().expect("producer thread"))
        .collect();
    let closing_tail = closer.join().expect("closer thread");
    let (mut tally, mut consumer, tail) = reader.join().expect("consumer thread");
    assert_eq!(tail, closing_tail);
    assert!(
        sent.iter().any(|&n| n < count),
        "the close came after every send; nothing raced it"
    );
    assert_eq!(
        tally.next, sent,
        "consumed after wait_published != sends that returned Ok"
    );
    // Joined: nothing more can arrive, not even a late cancelled claim with a message.
    assert_eq!(
        tally.batch(&mut consumer, u32::MAX),
        0,
        "a message arrived after the drain"
    );
    assert_eq!(producer.try_claim(1).err(), Some(ClaimError::Closed));
}

/// A producer and a consumer keep at most `IN_FLIGHT` messages in a 1,024-slot ring while
/// a third thread reads the gauges (`len`, `free`, `is_empty`), as the metrics path does.
/// No answer may count more messages than were ever in the ring at once: the consumer
/// passing the `tail` an observer already read must not make the ring look full.
///
/// Bounded in time: it stops after [`OBSERVE_FOR`] (or once the consumer took
/// [`OBSERVE_MESSAGES`]), whichever comes first.
#[test]
fn third_thread_observer_never_overcounts() {
    const IN_FLIGHT: u32 = 2;
    const OBSERVE_MESSAGES: u64 = 20_000_000;
    const OBSERVE_FOR: std::time::Duration = std::time::Duration::from_secs(2);
    const RING: u32 = 1024;
    let layout = RingLayout::new(RING, 64).expect("valid layout");
    let (producer, mut consumer) = HostRing::new(layout).split();
    let producer = Arc::new(producer);
    // Messages the consumer has released: bumped only after `consume` stored `head`, so
    // `sent - consumed` bounds what the ring holds from above.
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let sender = {
        let (producer, consumed, stop) = (
            Arc::clone(&producer),
            Arc::clone(&consumed),
            Arc::clone(&stop),
        );
        thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sent - consumed.load(Ordering::Acquire) >= u64::from(IN_FLIGHT) {
                    std::hint::spin_loop();
                    continue;
                }
                let claim = producer
                    .try_claim(1)
                    .expect("at most IN_FLIGHT of 1024 slots used");
                claim.write(0, make_tag(KIND_MESSAGE, 0), [0, 0], |_| {});
                claim.publish();
                sent += 1;
            }
        })
    };
    let receiver = {
        let (consumed, stop) = (Arc::clone(&consumed), Arc::clone(&stop));
        thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut total = 0u64;
            while total < OBSERVE_MESSAGES
                && started.elapsed() < OBSERVE_FOR
                && !stop.load(Ordering::Relaxed)
            {
                total += u64::from(consumer.consume(IN_FLIGHT, |_| Step::Next));
                // ORDERING: Release pairs with the sender's Acquire load: `head` was
                // stored before the count grows.
                consumed.store(total, Ordering::Release);
            }
            stop.store(true, Ordering::Relaxed);
            total
        })
    };
    let mut reads = 0u64;
    let mut worst_len = 0;
    let mut worst_free = RING;
    while !stop.load(Ordering::Relaxed) {
        let len = producer.len();
        let free = producer.free();
        worst_len = worst_len.max(len);
        worst_free = worst_free.min(free);
        if len > IN_FLIGHT || free < RING - IN_FLIGHT {
            stop.store(true, Ordering::Relaxed);
        }
        reads += 1;
    }
    sender.join().expect("sender thread");
    let total = receiver.join().expect("receiver thread");
    assert!(total > 0, "nothing was sent: the observer observed nothing");
    assert!(
        worst_len <= IN_FLIGHT && worst_free >= RING - IN_FLIGHT,
        "with at most {IN_FLIGHT} messages in flight, an observer read len {worst_len} and \
         free {worst_free} (of {RING}) in {reads} reads"
    );
}
