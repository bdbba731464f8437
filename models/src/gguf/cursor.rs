//! A bounds-checked little-endian reader over a byte slice.
//!
//! Invariant: no method indexes past the slice; every read that would is answered with `Short`
//! (where and how much was wanted), which the parser turns into a `GgufError::Truncated` that
//! says what it was reading.

/// A read that ran past the end of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub offset: u64,
    pub needed: u64,
}

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($name:ident, $t:ty) => {
        pub fn $name(&mut self) -> Result<$t, Short> {
            const N: usize = std::mem::size_of::<$t>();
            let b = self.take(N as u64)?;
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    };
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn pos(&self) -> u64 {
        self.pos as u64
    }

    pub fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Takes the next `n` bytes, or reports how many were wanted where.
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let short = Short { offset: self.pos as u64, needed: n };
        if n > self.remaining() {
            return Err(short);
        }
        let start = self.pos;
        self.pos += n as usize; // fits: n <= remaining <= usize::MAX
        Ok(&self.buf[start..self.pos])
    }

    read_le!(u8, u8);
    read_le!(i8, i8);
    read_le!(u16, u16);
    read_le!(i16, i16);
    read_le!(u32, u32);
    read_le!(i32, i32);
    read_le!(u64, u64);
    read_le!(i64, i64);
    read_le!(f32, f32);
    read_le!(f64, f64);

    /// A GGUF string: u64 byte length, then that many bytes (UTF-8 is checked by the caller,
    /// who knows what the string is for).
    pub fn string_bytes(&mut self) -> Result<&'a [u8], Short> {
        let len = self.u64()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_reports_short_reads() {
        let bytes = [1u8, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c'];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u32(), Ok(1));
        assert_eq!(c.i8(), Ok(-1));
        assert_eq!(c.string_bytes(), Ok(&b"abc"[..]));
        assert_eq!(c.u8(), Err(Short { offset: 16, needed: 1 }));
        let mut c = Cursor::new(&bytes[..6]);
        c.u32().unwrap();
        assert_eq!(c.u32(), Err(Short { offset: 4, needed: 4 }));
        // A huge declared string length must not overflow or allocate.
        let huge = [0xffu8; 8];
        assert_eq!(Cursor::new(&huge).string_bytes(), Err(Short { offset: 8, needed: u64::MAX }));
    }
}
