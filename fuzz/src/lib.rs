//! Shared pieces of the fuzz targets (docs/robustness.md):
//! - [`heap`]: a counting global allocator with a per-input limit, so a target can assert that a
//!   parser allocates no more than the bound it states, and an allocation past the limit fails
//!   (fallible ones turn into the parser's own "no memory" error, infallible ones abort: a finding);
//! - [`sparse`]: the input format of the disk and image targets: a declared size and a few runs
//!   of bytes, zeros elsewhere, so a seed made from a 32 MiB mkfs image is a few KiB;
//! - [`Cursor`]: reads fuzz bytes as numbers without failing (zeros when the input runs out).

pub mod fswalk;
pub mod heap;
pub mod images;
pub mod sparse;

/// Reads numbers from the fuzz input; past its end everything reads as zero.
pub struct Cursor<'a> {
    pub data: &'a [u8],
    pub at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, at: 0 }
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = end;
        &self.data[start..end]
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }
    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Split `data` at every occurrence of `sep` (for inputs made of several parts, such as the
/// files of a chain; a separator keeps a seed readable and lets mutations move bytes between
/// parts).
pub fn split_on<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= data.len() {
        if &data[i..i + sep.len()] == sep {
            out.push(&data[start..i]);
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
