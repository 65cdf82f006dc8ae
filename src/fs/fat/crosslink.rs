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

use super::{FatType, FatVolume, FsError, SECTOR, FAT_CACHE_SECTORS};
use crate::block::BlockDevice;
use crate::fs::File;

/// One run of the file's clusters: `first..first + count`, and the cluster that precedes
/// `first` in the chain (none for the file's first cluster).
#[derive(Clone, Copy, Debug)]
struct ClusterRun {
    first: u32,
    count: u32,
    before_first: Option<u32>,
}

impl ClusterRun {
    fn end(&self) -> u64 {
        self.first as u64 + self.count as u64
    }
}

fn refuse(path: &str, detail: alloc::string::String) -> FsError {
    FsError::Corrupt(format!(
        "{}: {}; run fsck.fat (dosfsck) or chkdsk on the host partition before using it",
        path, detail
    ))
}

impl<D: BlockDevice> FatVolume<D> {
    /// The file's clusters in chain order, as runs, from its extent list.
    fn cluster_runs_of(&self, file: &File) -> Result<Vec<ClusterRun>, FsError> {
        let g = &self.geo;
        let mut runs: Vec<ClusterRun> = Vec::new();
        for e in &file.extents.extents {
            let outside = || refuse(&file.path, format!("sectors {}+{} lie outside the data area", e.lba, e.sectors));
            let rel = e.lba.checked_sub(g.data_start).ok_or_else(outside)?;
            if rel % g.cluster_sectors != 0 {
                return Err(outside());
            }
            let first = rel / g.cluster_sectors + 2;
            let count = e.sectors.div_ceil(g.cluster_sectors);
            if first + count > g.max_cluster() as u64 + 1 {
                return Err(outside());
            }
            let before_first = runs.last().map(|r| (r.end() - 1) as u32);
            runs.push(ClusterRun { first: first as u32, count: count as u32, before_first });
        }
        Ok(runs)
    }

    /// Refuse the file when another cluster chain runs into its clusters, when one of its
    /// clusters is marked free or bad, or when it uses a cluster twice. Reads the active FAT
    /// once, 64 sectors at a time; memory is one entry per fragment of the file.
    pub fn check_allocation(&mut self, file: &File) -> Result<(), FsError> {
        let mut runs = self.cluster_runs_of(file)?;
        if runs.is_empty() {
            return Ok(());
        }
        runs.sort_unstable_by_key(|r| r.first);
        for w in runs.windows(2) {
            if w[0].end() > w[1].first as u64 {
                return Err(refuse(&file.path, format!("cluster {} appears twice in its chain", w[1].first)));
            }
        }
        // Sectors the cache changed must be on disk: the pass reads the FAT itself.
        self.flush_fat()?;
        let fat_type = self.geo.fat_type;
        let max_cluster = self.geo.max_cluster();
        let bad = fat_type.bad_cluster();
        // `runs[at]` is the first run that does not end before the cluster being looked at.
        let mut at = 0usize;
        let mut check = |cluster: u32, value: u32| -> Result<(), FsError> {
            while at < runs.len() && runs[at].end() <= cluster as u64 {
                at += 1;
            }
            if at < runs.len() && runs[at].first <= cluster {
                if value == 0 {
                    return Err(refuse(&file.path, format!("its cluster {} is marked free in the FAT", cluster)));
                }
                if value == bad {
                    return Err(refuse(&file.path, format!("its cluster {} is marked bad in the FAT", cluster)));
                }
            }
            if !(2..=max_cluster).contains(&value) {
                return Ok(());
            }
            let i = runs.partition_point(|r| r.first <= value);
            if i == 0 || runs[i - 1].end() <= value as u64 {
                return Ok(());
            }
            let run = runs[i - 1];
            let expected = if value == run.first { run.before_first } else { Some(value - 1) };
            if expected != Some(cluster) {
                return Err(refuse(
                    &file.path,
                    format!(
                        "it is cross-linked: cluster {} leads into its cluster {}, which belongs to its own chain \
                         (another file, or a loop, shares its clusters)",
                        cluster, value
                    ),
                ));
            }
            Ok(())
        };
        if fat_type == FatType::Fat12 {
            // At most 4084 clusters (6 KiB of FAT): the cached reader is quick enough, and
            // 12-bit entries straddle sectors.
            for cluster in 2..=max_cluster {
                let value = self.fat_entry(cluster)?;
                check(cluster, value)?;
            }
            return Ok(());
        }
        let entry_bytes: u64 = if fat_type == FatType::Fat16 { 2 } else { 4 };
        let fat_bytes_used = (max_cluster as u64 + 1) * entry_bytes;
        let mut chunk = vec![0u8; (FAT_CACHE_SECTORS * SECTOR) as usize];
        let mut offset = 0u64;
        while offset < fat_bytes_used {
            let sectors = FAT_CACHE_SECTORS.min((fat_bytes_used - offset).div_ceil(SECTOR));
            let bytes = (sectors * SECTOR) as usize;
            self.dev.read_sectors(self.geo.fat_start + offset / SECTOR, &mut chunk[..bytes])?;
            for (k, raw) in chunk[..bytes].chunks_exact(entry_bytes as usize).enumerate() {
                let cluster = offset / entry_bytes + k as u64;
                if cluster < 2 {
                    continue;
                }
                if cluster > max_cluster as u64 {
                    break;
                }
                let value = if entry_bytes == 2 {
                    u16::from_le_bytes([raw[0], raw[1]]) as u32
                } else {
                    u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) & 0x0FFF_FFFF
                };
                check(cluster as u32, value)?;
            }
            offset += bytes as u64;
        }
        Ok(())
    }
}
