//! The chained block hash of prefix caching: `h_i = hash(h_{i-1}, tokens of block i)`, with a
//! fixed root. Equal hashes are only a hint: the cache also stores each block's tokens and parent
//! and verifies both on a match, so a 64-bit collision can cost a cache miss but never reuse the
//! wrong KV.
//!
//! The hash is deterministic across runs and machines (no random seed): cache keys may later be
//! shared between processes.

use super::types::TokenId;

/// The chained hash of a full block.
pub type BlockHash = u64;

/// The chain's root ("no parent").
pub const ROOT_HASH: BlockHash = 0x6b69_6c6e_5f6b_7600; // "kiln_kv\0"

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Mixes 64 bits thoroughly (the splitmix64 finaliser), so nearby inputs land far apart.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `hash(parent, tokens)`. The token count is folded in, so blocks of different sizes differ.
pub fn chain_hash(parent: BlockHash, tokens: &[TokenId]) -> BlockHash {
    let mut h = mix(parent ^ K) ^ (tokens.len() as u64).wrapping_mul(K);
    for pair in tokens.chunks(2) {
        let word = match *pair {
            [a, b] => (a as u64) | ((b as u64) << 32),
            [a] => a as u64 | (1u64 << 63),
            _ => 0,
        };
        h = mix(h ^ word).wrapping_add(K);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_parent_tokens_and_order() {
        let a = chain_hash(ROOT_HASH, &[1, 2, 3, 4]);
        assert_eq!(a, chain_hash(ROOT_HASH, &[1, 2, 3, 4]));
        assert_ne!(a, chain_hash(ROOT_HASH, &[2, 1, 3, 4]));
        assert_ne!(a, chain_hash(a, &[1, 2, 3, 4]));
        assert_ne!(chain_hash(ROOT_HASH, &[1, 2, 3]), chain_hash(ROOT_HASH, &[1, 2, 3, 0]));
        assert_ne!(chain_hash(ROOT_HASH, &[]), ROOT_HASH);
    }
}
