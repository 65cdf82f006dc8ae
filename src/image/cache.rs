//! A fixed number of equal-sized pieces of an image's second-level tables (VMDK grain tables,
//! VHD block bitmaps), kept in memory taken once at open. Lookups scan the few keys; a miss
//! takes the next slot round-robin. The point is the bound, not the hit rate: however large the
//! image, a layer never holds more than `slots * piece_len` elements (docs/memory.md).

use alloc::vec::Vec;

use super::{try_reserve, ImageError};

pub(crate) struct PieceCache<T: Copy + Default> {
    piece_len: usize,
    keys: Vec<Option<u64>>,
    data: Vec<T>,
    next: usize,
}

impl<T: Copy + Default> PieceCache<T> {
    /// `slots` pieces of `piece_len` elements each, allocated now (so a full cache is the most
    /// it ever takes) or refused with [`ImageError::NoMemory`] naming `image` and `what`.
    pub(crate) fn new(slots: usize, piece_len: usize, image: &str, what: &'static str) -> Result<Self, ImageError> {
        let slots = slots.max(1);
        let total = slots.checked_mul(piece_len).ok_or_else(|| ImageError::corrupt(image, "table pieces too large"))?;
        let mut data = Vec::new();
        try_reserve(&mut data, total, image, what)?;
        data.resize(total, T::default());
        let mut keys = Vec::new();
        try_reserve(&mut keys, slots, image, what)?;
        keys.resize(slots, None);
        Ok(PieceCache { piece_len, keys, data, next: 0 })
    }

    /// Bytes held, full or not.
    pub(crate) fn bytes(&self) -> u64 {
        (self.data.capacity() * core::mem::size_of::<T>() + self.keys.capacity() * core::mem::size_of::<Option<u64>>()) as u64
    }

    fn slot_of(&self, key: u64) -> Option<usize> {
        self.keys.iter().position(|k| *k == Some(key))
    }

    pub(crate) fn get(&self, key: u64) -> Option<&[T]> {
        let s = self.slot_of(key)?;
        Some(&self.data[s * self.piece_len..(s + 1) * self.piece_len])
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut [T]> {
        let s = self.slot_of(key)?;
        Some(&mut self.data[s * self.piece_len..(s + 1) * self.piece_len])
    }

    /// A slot for `key` (the one it has, or the next one round-robin), for the caller to fill.
    /// The key is set only by [`PieceCache::commit`], so a failed fill leaves no stale piece.
    pub(crate) fn slot_for(&mut self, key: u64) -> (usize, &mut [T]) {
        let s = match self.slot_of(key) {
            Some(s) => s,
            None => {
                let s = self.next;
                self.next = (self.next + 1) % self.keys.len();
                self.keys[s] = None;
                s
            }
        };
        (s, &mut self.data[s * self.piece_len..(s + 1) * self.piece_len])
    }

    /// Mark slot `slot` (from [`PieceCache::slot_for`]) as holding `key`.
    pub(crate) fn commit(&mut self, slot: usize, key: u64) {
        self.keys[slot] = Some(key);
    }

    pub(crate) fn forget(&mut self, key: u64) {
        if let Some(s) = self.slot_of(key) {
            self.keys[s] = None;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.keys.iter_mut().for_each(|k| *k = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_slots_and_replaces_round_robin() {
        let mut c: PieceCache<u32> = PieceCache::new(2, 4, "t", "test").unwrap();
        let before = c.bytes();
        for key in 0..10u64 {
            let (s, piece) = c.slot_for(key);
            piece.fill(key as u32);
            c.commit(s, key);
            assert_eq!(c.get(key).unwrap(), &[key as u32; 4]);
        }
        assert!(c.get(7).is_none(), "only the last two pieces stay");
        assert_eq!(c.get(8).unwrap()[0], 8);
        assert_eq!(c.get(9).unwrap()[0], 9);
        assert_eq!(c.bytes(), before, "a full cache holds what it took at open");
        c.forget(9);
        assert!(c.get(9).is_none());
        let (s, _) = c.slot_for(3);
        assert!(c.get(3).is_none(), "a slot is not a hit until it is committed");
        c.commit(s, 3);
        assert!(c.get(3).is_some());
        c.clear();
        assert!(c.get(3).is_none() && c.get(8).is_none());
    }

    #[test]
    fn an_impossible_size_is_an_error_not_an_abort() {
        // More than any address space holds, on 32-bit firmware and 64-bit hosts alike.
        match PieceCache::<u64>::new(1 << 10, usize::MAX / 2048, "big.vmdk", "grain tables") {
            Err(ImageError::NoMemory { image, what, .. }) => assert_eq!((image.as_str(), what), ("big.vmdk", "grain tables")),
            Err(ImageError::Corrupt { .. }) => {}
            other => panic!("{:?}", other.err()),
        }
    }
}
