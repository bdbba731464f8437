//! A hash map keyed by [`SeqId`] with a one-multiply hasher: the scheduler looks ids up for every
//! sampled token, and SipHash would be a visible part of the per-step budget. Ids are chosen by
//! the engine, not by clients, so flooding-resistant hashing buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::request::SeqId;

/// Fibonacci hashing of a `u64`: spreads consecutive ids over the high bits hashbrown uses.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u64; fold them in a byte at a time.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Id -> slot index in the scheduler's sequence slab.
pub(crate) type IdMap = HashMap<SeqId, u32, BuildHasherDefault<IdHasher>>;
