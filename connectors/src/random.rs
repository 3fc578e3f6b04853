//! A counter-based random generator: the numbers of record `i` depend only on `(seed, i)`,
//! so any split of any parallelism, and any replay, draws the same values for that record.

/// SplitMix64's finalizer: a fast, well-mixed bijection on u64.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The random stream of one record.
///
/// ```
/// use oxflow_connectors::random::RecordRng;
/// // Record 42 draws the same numbers wherever and whenever it is generated.
/// let a = RecordRng::new(7, 42).next_u64();
/// assert_eq!(a, RecordRng::new(7, 42).next_u64());
/// assert!(RecordRng::new(7, 42).below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct RecordRng {
    state: u64,
}

impl RecordRng {
    /// The generator of record `index` under `seed`.
    #[inline]
    pub fn new(seed: u64, index: u64) -> Self {
        RecordRng {
            state: mix(seed ^ mix(index.wrapping_add(0x9e37_79b9_7f4a_7c15))),
        }
    }
    /// 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }
    /// Uniform in `[0, n)`; `n` must be positive.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift: unbiased enough for benchmark data, no division.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `[lo, hi)`; `hi > lo`.
    #[inline]
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }
    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// True with probability `num / den`.
    #[inline]
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    /// Appends `len` random lower-case letters to `out`.
    pub fn letters(&mut self, len: usize, out: &mut String) {
        let mut left = len;
        while left > 0 {
            let bits = self.next_u64();
            for k in 0..left.min(8) {
                out.push((b'a' + ((bits >> (k * 8)) as u8 % 26)) as char);
            }
            left = left.saturating_sub(8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_index_same_numbers() {
        let a: Vec<u64> = {
            let mut r = RecordRng::new(7, 42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = RecordRng::new(7, 42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = RecordRng::new(7, 43);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_range_and_spreads() {
        let mut seen = [0u32; 10];
        for i in 0..10_000 {
            let v = RecordRng::new(1, i).below(10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
