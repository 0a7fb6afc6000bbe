//! SplitMix64 (Steele, Lea and Flood 2014), the workspace's one small deterministic generator.
//!
//! Seeds are mixed and test inputs drawn with it wherever a value must be reproducible from a
//! `u64` on every platform and across dependency upgrades (a `rand` stream may change between
//! versions). It is not the model's noise: that is [`crate::kernels::noise::NoiseStream`],
//! counter-based so that the CPU and every GPU draw the same bits.

/// SplitMix64's increment, ⌊2⁶⁴/φ⌋ (odd, so the state walks through every `u64`).
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: scrambles a 64-bit value into a well-mixed one (a bijection).
pub fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// A seed scrambled into a well-mixed one: the first output of a generator seeded with `seed`.
pub fn splitmix(seed: u64) -> u64 {
    mix(seed.wrapping_add(GOLDEN_GAMMA))
}

/// A SplitMix64 generator: one 64-bit state, full period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is `mix(seed + GOLDEN_GAMMA)`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference sequence of SplitMix64 for seed 0 (the values the Java and C reference
    /// implementations print).
    #[test]
    fn seed_zero_gives_the_reference_sequence() {
        let mut generator = SplitMix64::new(0);
        let first: Vec<u64> = (0..3).map(|_| generator.next_u64()).collect();
        assert_eq!(first, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F]);
    }

    #[test]
    fn splitmix_is_the_first_output_for_a_seed() {
        assert_eq!(splitmix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix(977), SplitMix64::new(977).next_u64());
    }

    #[test]
    fn mix_is_the_output_function_of_the_generator() {
        assert_eq!(mix(0), 0);
        assert_eq!(mix(GOLDEN_GAMMA), 0xE220_A839_7B1D_CDAF);
        let mut generator = SplitMix64::new(1234);
        assert_eq!(generator.next_u64(), mix(1234u64.wrapping_add(GOLDEN_GAMMA)));
        assert_eq!(generator.next_u64(), mix(1234u64.wrapping_add(GOLDEN_GAMMA.wrapping_mul(2))));
    }

    /// The state wraps around instead of overflowing.
    #[test]
    fn the_state_wraps_at_the_top_of_u64() {
        let mut generator = SplitMix64::new(u64::MAX);
        assert_eq!(generator.next_u64(), mix(GOLDEN_GAMMA - 1));
    }
}
