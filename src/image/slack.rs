//! Write slack at boot (invariant 2, docs/architecture.md): before the guest starts, stage2 makes
//! sure the leaf of a sparse image has room for new blocks, by growing the file on the host
//! filesystem and then moving the format's trailer (the VHD footer) to the new end. The engine then
//! allocates inside that room and never changes filesystem metadata.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{Format, ImageError, ImageFile, Layer, Mapping, SECTOR_BYTES};

/// Whether a leaf needs write slack for new blocks, and whether slack can be added at the end of
/// its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlackNeed {
    /// Every sector already has its place (raw, fixed, flat): writes never allocate.
    None,
    /// Sparse, single file: slack can be added at its end.
    Growable,
    /// Sparse, but slack cannot be added by growing its file (the reason).
    NotGrowable(String),
}

pub fn slack_need(layer: &dyn Layer) -> SlackNeed {
    let variant = layer.variant();
    match layer.format() {
        Format::Raw => SlackNeed::None,
        Format::Vhd | Format::Vdi if variant == "fixed" => SlackNeed::None,
        Format::Vhd | Format::Vdi => SlackNeed::Growable,
        Format::Vmdk if variant == "monolithicSparse" => SlackNeed::Growable,
        // Compressed grains are never rewritten at boot: the engine refuses writes to it.
        Format::Vmdk if variant.contains("stream") => SlackNeed::None,
        Format::Vmdk if variant.contains("Sparse") => SlackNeed::NotGrowable(format!(
            "{} is a VMDK {} image; vboot adds slack only to monolithicSparse files",
            layer.name(),
            variant
        )),
        Format::Vmdk => SlackNeed::None,
    }
}

/// Bytes of `layer`'s virtual disk that a write would have to allocate (not stored in the layer
/// itself). An allocated VHD differencing block counts as stored without its bitmap being read.
pub fn unallocated_bytes(layer: &mut dyn Layer) -> Result<u64, ImageError> {
    if let Some(bytes) = layer.unallocated_bytes_known() {
        return Ok(bytes);
    }
    let total = layer.virtual_sectors();
    let mut sector = 0u64;
    let mut unallocated = 0u64;
    while sector < total {
        if let Some(n) = layer.map_deferred(sector)? {
            sector += n.max(1);
            continue;
        }
        let (mapping, n) = layer.map(sector)?;
        let n = n.max(1).min(total - sector);
        if matches!(mapping, Mapping::Parent | Mapping::Zero) {
            unallocated += n;
        }
        sector += n;
    }
    Ok(unallocated.saturating_mul(SECTOR_BYTES))
}

/// Write slack a leaf should have before boot: what was asked for, but never more than its
/// unallocated space needs (with room for per-block metadata), so a fully allocated image is
/// left alone.
pub fn wanted_bytes(asked_bytes: u64, unallocated_bytes: u64) -> u64 {
    if unallocated_bytes == 0 {
        return 0;
    }
    let cap = unallocated_bytes.saturating_add(unallocated_bytes / 1024).saturating_add(64 << 10);
    let bytes = asked_bytes.min(cap);
    bytes.div_ceil(SECTOR_BYTES).checked_mul(SECTOR_BYTES).unwrap_or(bytes / SECTOR_BYTES * SECTOR_BYTES)
}

/// The bytes a `format` image keeps at the end of its file, which must be at the new end when
/// the file grows: a VHD's footer (its last sector); nothing for the other formats.
pub fn trailer(file: &mut dyn ImageFile, format: Format) -> Result<Vec<u8>, ImageError> {
    let len = file.len_bytes();
    if format != Format::Vhd {
        return Ok(vec![]);
    }
    if len < 512 {
        return Err(ImageError::corrupt(file.name(), format!("a VHD of {} bytes has no footer", len)));
    }
    let mut footer = vec![0u8; 512];
    file.read_at(len - 512, &mut footer)?;
    Ok(footer)
}

/// The file of a `format` image grew from `old_len_bytes` to its current length, its
/// [`trailer`] already written at the new end by the filesystem (`Volume::grow_file_with_tail`,
/// before the file took its new length): zero the old copy, which now lies in the slack. A power
/// cut before this leaves a stale copy there, which readers never look at.
pub fn retire_old_trailer(file: &mut dyn ImageFile, format: Format, old_len_bytes: u64) -> Result<(), ImageError> {
    let new_len = file.len_bytes();
    if format != Format::Vhd || new_len == old_len_bytes {
        return Ok(());
    }
    if new_len < old_len_bytes || old_len_bytes < 512 {
        return Err(ImageError::corrupt(file.name(), format!("file length went from {} to {} bytes", old_len_bytes, new_len)));
    }
    file.write_at(old_len_bytes - 512, &[0u8; 512])?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::create::{create, CreateOptions, Variant};
    use crate::image::{open_layer, MemFile};
    use alloc::boxed::Box;

    fn make(variant: Variant, reserve: u64) -> MemFile {
        let mut f = MemFile::new("/a.img", alloc::vec::Vec::new());
        let opts = CreateOptions { size_bytes: 64 << 20, reserve_bytes: reserve, exact_size: false, seed: 7, now_unix: 0 };
        create(variant, &mut f, "a.img", &opts, None, &mut |_: &str| -> Result<Box<dyn ImageFile>, ImageError> { Err(ImageError::Invalid { detail: "one file".into() }) }).unwrap();
        f
    }

    fn layer(f: &MemFile) -> Box<dyn Layer> {
        open_layer(Box::new(f.clone()), &mut |_| None).unwrap()
    }

    #[test]
    fn growing_adds_exactly_the_new_bytes_as_slack_in_every_sparse_format() {
        for v in [Variant::VhdDynamic, Variant::VdiDynamic, Variant::VmdkMonolithicSparse] {
            let mut f = make(v, 0);
            let l = layer(&f);
            assert_eq!(slack_need(&*l), SlackNeed::Growable, "{:?}", v);
            let before = l.slack_bytes();
            let old = f.bytes.len() as u64;
            let tail = trailer(&mut f, v.format()).unwrap();
            // The filesystem hands back garbage in the new clusters, the trailer at the end.
            f.bytes.resize(old as usize + (3 << 20), 0xA5);
            let end = f.bytes.len();
            f.bytes[end - tail.len()..].copy_from_slice(&tail);
            f.fixed_len = true;
            // The image is whole at its new length before the old trailer goes.
            assert_eq!(layer(&f).slack_bytes(), before + (3 << 20), "{:?}", v);
            retire_old_trailer(&mut f, v.format(), old).unwrap();
            let l = layer(&f);
            assert_eq!(l.slack_bytes(), before + (3 << 20), "{:?}", v);
            if v == Variant::VhdDynamic {
                assert_eq!(&f.bytes[old as usize - 512..old as usize], &[0u8; 512][..], "old footer zeroed");
            }
        }
    }

    #[test]
    fn a_child_made_in_place_over_garbage_reads_as_its_parent_and_takes_writes() {
        use crate::image::create::{create_filling, parent_info};
        for v in [Variant::VhdDynamic, Variant::VdiDynamic, Variant::VmdkMonolithicSparse] {
            let parent = make(v, 0);
            let pl = layer(&parent);
            let info = parent_info(&*pl, "a.img", "/a.img");
            let mut child = MemFile::new("/c.img", alloc::vec![0x5Au8; 8 << 20]);
            child.fixed_len = true;
            let opts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: 9, now_unix: 0 };
            create_filling(v, &mut child, "c.img", &opts, Some(&info)).unwrap();
            assert_eq!(child.bytes.len(), 8 << 20, "{:?}: the file did not grow", v);
            let cl = layer(&child);
            assert!(cl.slack_bytes() > (6 << 20), "{:?}: slack {}", v, cl.slack_bytes());
            let mut disk = crate::image::disk::Disk::new(alloc::vec![cl, layer(&parent)], alloc::vec::Vec::new()).unwrap();
            let mut buf = alloc::vec![0xFFu8; 4096];
            disk.read(1000, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{:?}: garbage in the slack showed through", v);
            // A read across a block boundary (VHD 2 MiB, VDI 1 MiB) that falls through to the parent.
            let mut big = alloc::vec![0xFFu8; 16 * 512];
            disk.read(4088, &mut big).unwrap();
            assert!(big.iter().all(|&b| b == 0), "{:?}", v);
            disk.write(1001, &[7u8; 512]).unwrap();
            disk.read(1000, &mut buf).unwrap();
            assert!(buf[..512].iter().all(|&b| b == 0) && buf[512..1024].iter().all(|&b| b == 7) && buf[1024..].iter().all(|&b| b == 0), "{:?}", v);
        }
    }

    #[test]
    fn fixed_and_flat_images_need_no_slack() {
        for v in [Variant::VhdFixed, Variant::VdiFixed, Variant::Raw] {
            let f = make(v, 0);
            assert_eq!(slack_need(&*layer(&f)), SlackNeed::None, "{:?}", v);
        }
    }

    #[test]
    fn wanted_follows_what_is_left_to_allocate() {
        for v in [Variant::VhdDynamic, Variant::VdiDynamic, Variant::VmdkMonolithicSparse] {
            let mut l = layer(&make(v, 80 << 20));
            let virt = l.virtual_sectors() * 512;
            assert_eq!(unallocated_bytes(&mut *l).unwrap(), virt, "{:?}", v);
            // Write the first half, then the rest: what is left to allocate shrinks to nothing.
            let mut disk = crate::image::disk::Disk::new(alloc::vec![l], alloc::vec::Vec::new()).unwrap();
            let sectors = disk.sectors();
            let chunk = alloc::vec![1u8; 128 * 512];
            let mut at = 0;
            while at < sectors {
                let n = (sectors - at).min(128) as usize;
                disk.write(at, &chunk[..n * 512]).unwrap();
                at += n as u64;
                if at == 128 * 256 {
                    let left = unallocated_bytes(&mut *disk.layers_mut()[0]).unwrap();
                    assert!(left < virt && left >= virt - (16 << 20) - (2 << 20), "{:?}: {} of {}", v, left, virt);
                }
            }
            assert_eq!(unallocated_bytes(&mut *disk.layers_mut()[0]).unwrap(), 0, "{:?}", v);
        }
        assert_eq!(wanted_bytes(1 << 30, 0), 0);
        assert_eq!(wanted_bytes(1 << 20, 64 << 20), 1 << 20);
        assert_eq!(wanted_bytes(1 << 30, 64 << 20), (64 << 20) + (64 << 10) + (64 << 10));
        assert_eq!(wanted_bytes(1000, 1 << 20), 1024);
    }
}
