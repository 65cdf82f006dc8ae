//! The input format of the disk, filesystem and image targets: a device or file of a declared
//! size holding a few runs of bytes, zeros elsewhere.
//!
//! ```text
//! "VSP1"  u64 LE declared length in bytes
//! then runs until the input ends:  u64 LE offset  u32 LE length  `length` bytes
//! ```
//!
//! A run that reaches past the declared length is clipped; later runs lie over earlier ones. An
//! input without the magic is its own content (declared length = input length), so plain bytes
//! are valid inputs too. Seeds are made from real images by dropping their zero sectors
//! (`cargo xtask fuzz --make-seeds`), which turns a 32 MiB mkfs image into a few KiB.
//!
//! Writes go into an overlay whose memory is taken when the store is made, so that a write made
//! by the code under test does not count as its allocation, and a store never grows.

use std::cell::RefCell;
use std::rc::Rc;

use vboot::block::{check_request, BlockDevice, BlockError, SECTOR_BYTES};
use vboot::image::{ImageError, ImageFile};

pub const MAGIC: &[u8; 4] = b"VSP1";
/// Overlay room for writes (bytes, and separate writes).
const WRITE_ARENA_BYTES: usize = 1 << 20;
const WRITE_ENTRIES: usize = 1024;

pub struct Store {
    pub len: u64,
    /// (offset, bytes) in input order.
    runs: Vec<(u64, Vec<u8>)>,
    /// Writes: (offset, start in `arena`, length).
    writes: Vec<(u64, usize, usize)>,
    arena: Vec<u8>,
}

impl Store {
    /// Parse the sparse format; `max_len` caps the declared length (a fuzz input may declare
    /// anything; targets choose how large a device they want to allow).
    pub fn parse(data: &[u8], max_len: u64) -> Store {
        let mut runs = Vec::new();
        let len;
        if data.len() >= 12 && &data[..4] == MAGIC {
            len = u64::from_le_bytes(data[4..12].try_into().unwrap()).min(max_len);
            let mut at = 12;
            while at + 12 <= data.len() {
                let off = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
                let n = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
                at += 12;
                let n = n.min(data.len() - at);
                let bytes = &data[at..at + n];
                at += n;
                if off < len {
                    let keep = (len - off).min(n as u64) as usize;
                    runs.push((off, bytes[..keep].to_vec()));
                }
            }
        } else {
            len = (data.len() as u64).min(max_len);
            runs.push((0, data[..len as usize].to_vec()));
        }
        Store {
            len,
            runs,
            writes: Vec::with_capacity(WRITE_ENTRIES),
            arena: Vec::with_capacity(WRITE_ARENA_BYTES),
        }
    }

    /// A store holding `bytes` (harness-made content).
    pub fn from_bytes(bytes: Vec<u8>) -> Store {
        Store {
            len: bytes.len() as u64,
            runs: vec![(0, bytes)],
            writes: Vec::with_capacity(WRITE_ENTRIES),
            arena: Vec::with_capacity(WRITE_ARENA_BYTES),
        }
    }

    /// Fill `buf` from `off`; the caller has checked the range.
    pub fn read(&self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        let mut overlay = |at: u64, src: &[u8]| {
            let s_end = at + src.len() as u64;
            let a = at.max(off);
            let b = s_end.min(end);
            if a < b {
                buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&src[(a - at) as usize..(b - at) as usize]);
            }
        };
        for (at, bytes) in &self.runs {
            overlay(*at, bytes);
        }
        for &(at, start, n) in &self.writes {
            overlay(at, &self.arena[start..start + n]);
        }
    }

    /// Record a write; `false` when the overlay is full (the caller reports an I/O error).
    pub fn write(&mut self, off: u64, buf: &[u8]) -> bool {
        if self.writes.len() == self.writes.capacity() || self.arena.len() + buf.len() > self.arena.capacity() {
            return false;
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(buf);
        self.writes.push((off, start, buf.len()));
        true
    }
}

/// A block device over a [`Store`]; its size is the declared length in whole sectors.
pub struct SparseDisk {
    pub store: Store,
    pub read_only: bool,
}

impl SparseDisk {
    pub fn parse(data: &[u8], max_bytes: u64) -> SparseDisk {
        SparseDisk { store: Store::parse(data, max_bytes), read_only: false }
    }
}

impl BlockDevice for SparseDisk {
    fn sector_count(&self) -> u64 {
        self.store.len / SECTOR_BYTES as u64
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sector_count())?;
        self.store.read(lba * SECTOR_BYTES as u64, buf);
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_request(lba, buf.len(), self.sector_count())?;
        if !self.store.write(lba * SECTOR_BYTES as u64, buf) {
            return Err(BlockError::Io { lba, status: 0xFF });
        }
        Ok(())
    }
}

/// An image file over a shared [`Store`]: a boot-time file (it never grows), readable and
/// writable inside its length.
#[derive(Clone)]
pub struct SparseFile {
    pub name: String,
    pub store: Rc<RefCell<Store>>,
}

impl SparseFile {
    pub fn new(name: &str, store: Store) -> SparseFile {
        SparseFile { name: name.to_string(), store: Rc::new(RefCell::new(store)) }
    }
    fn check(&self, offset: u64, n: usize) -> Result<(), ImageError> {
        let len = self.store.borrow().len;
        if offset.checked_add(n as u64).map_or(true, |e| e > len) {
            return Err(ImageError::Io { image: self.name.clone(), offset_bytes: offset, detail: String::new() });
        }
        Ok(())
    }
}

impl ImageFile for SparseFile {
    fn len_bytes(&self) -> u64 {
        self.store.borrow().len
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check(offset_bytes, buf.len())?;
        self.store.borrow().read(offset_bytes, buf);
        Ok(())
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        self.check(offset_bytes, buf.len())?;
        if !self.store.borrow_mut().write(offset_bytes, buf) {
            return Err(ImageError::Io { image: self.name.clone(), offset_bytes, detail: String::new() });
        }
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
}
