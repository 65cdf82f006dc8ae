//! The allocation check of a file about to be served to a guest: its clusters against the whole
//! FAT, in one pass (docs/filesystems.md, "FAT: the cross-link pass").
//!
//! Opening the file already walked its chain: every cluster lies in the data area, each link
//! names a used cluster, and the chain does not loop. What the walk cannot see is another chain
//! that runs into this one: a cluster outside the file (or in it, but not the cluster before)
//! whose FAT entry names one of the file's clusters. Two files then share the clusters from
//! there on, and a guest write would change the other file. One pass over the FAT finds every
//! such link. A chain that *starts* inside this file (a directory entry naming one of its
//! clusters) has no FAT entry pointing into the file, and is not found here: that needs every
//! directory of the volume.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use super::{FatType, FatVolume, FsError, FAT_CACHE_SECTORS, SECTOR};
use crate::block::BlockDevice;
use crate::fs::{allocation_refusal, File, UnitRanges};

const REPAIR: &str = "fsck.fat (dosfsck) or chkdsk";

impl<D: BlockDevice> FatVolume<D> {
    /// Refuse the file when another cluster chain runs into its clusters, when one of its
    /// clusters is marked free or bad, or when it uses a cluster twice. Reads the active FAT
    /// once, 64 sectors at a time; memory is two pairs of numbers per fragment of the file.
    pub fn check_allocation(&mut self, file: &File) -> Result<(), FsError> {
        self.check_allocation_of(&[file])
    }

    /// [`FatVolume::check_allocation`] for several files (a chain's parents) in one pass over
    /// the FAT; two of them sharing a cluster is refused too. A refusal names the file whose
    /// cluster it is.
    pub fn check_allocation_of(&mut self, files: &[&File]) -> Result<(), FsError> {
        let g = &self.geo;
        // All the files' clusters, sorted; `owners` says whose range starts where.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut owners: Vec<(u64, u64)> = Vec::new();
        // Each extent's first cluster with the cluster before it in its chain (u64::MAX for a
        // file's first): inside an extent the cluster before is simply the one below.
        let mut firsts: Vec<(u64, u64)> = Vec::new();
        for (k, file) in files.iter().enumerate() {
            let own = UnitRanges::of_file(file, g.data_start, g.cluster_sectors, 2, g.max_cluster() as u64 + 1, "cluster", REPAIR)?;
            owners.extend(own.ranges.iter().map(|r| (r.0, k as u64)));
            ranges.extend(own.ranges);
            let mut before = u64::MAX;
            for e in &file.extents.extents {
                firsts.push(((e.lba - g.data_start) / g.cluster_sectors + 2, before));
                before = (e.lba + e.sectors - 1 - g.data_start) / g.cluster_sectors + 2;
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        ranges.sort_unstable();
        owners.sort_unstable();
        firsts.sort_unstable();
        let owner = |cluster: u64| -> &File {
            let i = owners.partition_point(|o| o.0 <= cluster).saturating_sub(1);
            files[owners.get(i).map_or(0, |o| o.1 as usize)]
        };
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                let detail = format!("its cluster {} is also a cluster of {}", w[1].0, owner(w[0].0).path);
                return Err(allocation_refusal(owner(w[1].0), detail, REPAIR));
            }
        }
        let clusters = UnitRanges { ranges };
        // Sectors the cache changed must be on disk: the pass reads the FAT itself.
        self.flush_fat()?;
        let fat_type = self.geo.fat_type;
        let max_cluster = self.geo.max_cluster() as u64;
        let bad = fat_type.bad_cluster() as u64;
        // The files' lowest and highest cluster: nearly every entry of a volume lies outside them
        // and needs no search (the pass costs its time per entry: 129,000 entries on a 64 MiB
        // volume, 64 million on a 2 TiB one).
        let lowest = clusters.ranges.first().map_or(u64::MAX, |r| r.0);
        let past_highest = clusters.ranges.iter().map(|r| r.1).max().unwrap_or(0);
        let check = |cluster: u64, value: u64| -> Result<(), FsError> {
            let ours = |c: u64| c >= lowest && c < past_highest && clusters.overlap(c, c + 1).is_some();
            if (value == 0 || value == bad) && ours(cluster) {
                let state = if value == 0 { "free" } else { "bad" };
                return Err(allocation_refusal(owner(cluster), format!("its cluster {} is marked {} in the FAT", cluster, state), REPAIR));
            }
            if !(2..=max_cluster).contains(&value) || !ours(value) {
                return Ok(());
            }
            let expected = match firsts.binary_search_by_key(&value, |f| f.0) {
                Ok(i) => firsts[i].1,
                Err(_) => value - 1,
            };
            if expected != cluster {
                return Err(allocation_refusal(
                    owner(value),
                    format!(
                        "it is cross-linked: cluster {} leads into its cluster {} (another file, or a loop, shares its clusters)",
                        cluster, value
                    ),
                    REPAIR,
                ));
            }
            Ok(())
        };
        if fat_type == FatType::Fat12 {
            // At most 4084 clusters (6 KiB of FAT), and 12-bit entries straddle sectors: the
            // cached reader does.
            for cluster in 2..=max_cluster as u32 {
                let value = self.fat_entry(cluster)?;
                check(cluster as u64, value as u64)?;
            }
            return Ok(());
        }
        let entry_bytes: u64 = if fat_type == FatType::Fat16 { 2 } else { 4 };
        let fat_bytes_used = (max_cluster + 1) * entry_bytes;
        let mut chunk = vec![0u8; (FAT_CACHE_SECTORS * SECTOR) as usize];
        let mut offset = 0u64;
        while offset < fat_bytes_used {
            let sectors = FAT_CACHE_SECTORS.min((fat_bytes_used - offset).div_ceil(SECTOR));
            let bytes = (sectors * SECTOR) as usize;
            self.dev.read_sectors(self.geo.fat_start + offset / SECTOR, &mut chunk[..bytes])?;
            // `check` acts only where the entry's cluster or its value is one of the files'
            // clusters, so the rest is skipped with one unsigned compare each, in 32-bit
            // arithmetic (FAT32's largest cluster number fits): under QEMU's TCG this loop was
            // most of the image-open step of a boot (docs/benchmarks.md).
            let first = offset / entry_bytes;
            let lo = lowest.min(u32::MAX as u64) as u32;
            let span = past_highest.saturating_sub(lowest).min(u32::MAX as u64) as u32;
            let ours32 = |c: u32| c.wrapping_sub(lo) < span;
            let mut cluster = first;
            let visit = |cluster: u64, value: u32| -> Result<(), FsError> {
                if (ours32(cluster as u32) || ours32(value)) && (2..=max_cluster).contains(&cluster) {
                    check(cluster, value as u64)?;
                }
                Ok(())
            };
            if entry_bytes == 2 {
                for raw in chunk[..bytes].chunks_exact(2) {
                    visit(cluster, u16::from_le_bytes([raw[0], raw[1]]) as u32)?;
                    cluster += 1;
                }
            } else {
                for raw in chunk[..bytes].chunks_exact(4) {
                    visit(cluster, u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) & 0x0FFF_FFFF)?;
                    cluster += 1;
                }
            }
            offset += bytes as u64;
        }
        Ok(())
    }
}
