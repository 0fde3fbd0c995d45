//! A tiny deterministic pseudo-random generator (Marsaglia's xorshift64) for the
//! examples' inputs: no dependency, the same numbers on every platform and run.

/// xorshift64: 64 bits of state, shifts 13, 7, 17. Not for cryptography; good enough to
/// make example inputs irregular and reproducible.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator seeded with `seed` (zero, a fixed point of xorshift, is replaced).
    pub fn new(seed: u64) -> Self {
        Self {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// A number in `0..n` (`n` > 0), by multiplying the high 32 bits with `n`.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift64;

    #[test]
    fn stays_below_and_repeats() {
        let mut a = XorShift64::new(7);
        let mut b = XorShift64::new(7);
        for _ in 0..1000 {
            let x = a.below(10);
            assert!(x < 10);
            assert_eq!(x, b.below(10));
        }
        let mut zero = XorShift64::new(0);
        assert_ne!(zero.next_u64(), 0);
    }
}
