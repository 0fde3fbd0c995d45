//! One thread writes and reads 64-byte messages through a gyre ring (exclusive claims,
//! `consume`) and through an `rtrb` ring, half the capacity at a time, and prints the cost
//! of one write + read of each: the ring protocol's own cost, without a second core.
//!
//! ```text
//! cargo run --release -p gyre-bench --example ring_micro [CAPACITY]
//! ```

use std::sync::Arc;
use std::time::Instant;

use gyre_runtime::ring::{Consumer, HostRing, Producer, RingLayout, Step};

/// Messages per measurement.
const MESSAGES: u64 = 20_000_000;

fn gyre(capacity: u32) -> f64 {
    let ring = Arc::new(HostRing::new(
        RingLayout::new(capacity, 128).expect("a power-of-two capacity"),
    ));
    let producer = Producer::new(ring.clone()).expect("a fresh ring has no producer");
    let mut consumer = Consumer::new(ring).expect("a fresh ring has no consumer");
    let payload = [7u8; 64];
    let batch = capacity / 2;
    let (mut sum, mut done) = (0u64, 0u64);
    let start = Instant::now();
    while done < MESSAGES {
        for _ in 0..batch {
            // SAFETY: this thread is the ring's only producer.
            unsafe { producer.push_exclusive(1, [0, 0], &payload) }.expect("half the ring is free");
        }
        consumer.consume(batch, |slot| {
            sum += u64::from(slot.payload[0]);
            Step::Next
        });
        done += u64::from(batch);
    }
    let ns = start.elapsed().as_nanos() as f64 / done as f64;
    assert_eq!(sum, done * 7, "every message read back");
    ns
}

fn rtrb(capacity: u32) -> f64 {
    let (mut producer, mut consumer) = rtrb::RingBuffer::<[u8; 64]>::new(capacity as usize);
    let batch = capacity / 2;
    let (mut sum, mut done) = (0u64, 0u64);
    let start = Instant::now();
    while done < MESSAGES {
        for _ in 0..batch {
            producer.push([7u8; 64]).expect("half the ring is free");
        }
        for _ in 0..batch {
            sum += u64::from(consumer.pop().expect("written above")[0]);
        }
        done += u64::from(batch);
    }
    let ns = start.elapsed().as_nanos() as f64 / done as f64;
    assert_eq!(sum, done * 7, "every message read back");
    ns
}

fn main() {
    let capacity = std::env::args()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(1024u32);
    for round in 1..=3 {
        let (g, r) = (gyre(capacity), rtrb(capacity));
        println!(
            "round {round}: gyre {g:.1} ns, rtrb {r:.1} ns per 64-byte write + read \
             (capacity {capacity}, one thread); ratio {:.2}",
            g / r
        );
    }
}
