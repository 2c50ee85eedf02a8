//! Random text from the operating system's source: API keys, ids, passwords.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_character_and_never_repeats_a_long_string() {
        let text = base62(20_000).expect("rng");
        assert_eq!(text.len(), 20_000);
        let distinct: std::collections::HashSet<char> = text.chars().collect();
        assert_eq!(distinct.len(), 62);
        assert_ne!(base62(43).expect("rng"), base62(43).expect("rng"));
    }
}
