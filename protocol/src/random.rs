//! Random text from the operating system's source (API keys, ids, passwords), and the one
//! seeded generator every crate uses where a run must be reproducible ([`SplitMix64`]).

/// Characters of [`base62`] text.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed: {0}")]
pub struct RandomError(String);

/// `n` characters drawn uniformly from [`BASE62`] (rejection sampling: no modulo bias),
/// 5.95 bits each.
pub fn base62(n: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(n);
    let mut buffer = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buffer).map_err(|e| RandomError(e.to_string()))?;
        // 248 = 4 × 62: bytes at or above it would favour the first characters.
        for byte in buffer.into_iter().filter(|b| *b < 248) {
            if out.len() == n {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    Ok(out)
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a seeded 64-bit generator, reproducible on
/// every platform: simulator traces, fault-run choices, the embedded tiny model's weights and
/// initial latents all come from it.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed` (its state starts at `seed`).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_mix_64_gives_the_reference_sequence() {
        // The first outputs for seed 0 of the reference implementation (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn draws_every_character_and_never_repeats_a_long_string() {
        let text = base62(20_000).expect("rng");
        assert_eq!(text.len(), 20_000);
        let distinct: std::collections::HashSet<char> = text.chars().collect();
        assert_eq!(distinct.len(), 62);
        assert_ne!(base62(43).expect("rng"), base62(43).expect("rng"));
    }
}
