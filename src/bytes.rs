//! Fixed-width integers at byte offsets of on-disk structures. Each reader answers 0 when the
//! bytes are not all inside the slice (an offset read from a damaged disk may point anywhere);
//! the callers' own range checks say what is wrong.

fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    array(b, at).map(u16::from_le_bytes).unwrap_or(0)
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    array(b, at).map(u32::from_le_bytes).unwrap_or(0)
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    array(b, at).map(u64::from_le_bytes).unwrap_or(0)
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    array(b, at).map(u16::from_be_bytes).unwrap_or(0)
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    array(b, at).map(u32::from_be_bytes).unwrap_or(0)
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    array(b, at).map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_outside_and_near_the_end_of_the_address_space() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(be16(&b, 0), 0x0102);
        assert_eq!(le32(&b, 5), 0x0908_0706);
        assert_eq!(le64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be64(&b, 1), 0x0203_0405_0607_0809);
        assert_eq!(le32(&b, 6), 0);
        assert_eq!(le64(&b, usize::MAX - 3), 0);
        assert_eq!(be32(&b, usize::MAX), 0);
    }
}
