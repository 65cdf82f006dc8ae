//! `--direct` (issue 18): device-mapper tables that send the sectors of the image lying one for
//! one on the host disk straight to the host partition, and every other sector to the NBD
//! device at the same place, so that most of Linux's reads and writes skip the server. This
//! module is the pure part: which runs qualify (given by the server's open disk), and the tables
//! built from them, for the whole disk and for each partition. `dm.rs` in the program talks to
//! the kernel.
//!
//! Which runs may go direct is the caller's business (`VirtualDisk::direct_runs`): for a
//! writable disk only the runs the leaf holds in place where a write changes nothing else
//! (`Disk::in_place_run`); read-only, any run of a file kept in place. The tables here only place
//! them, and never put a host target outside the host partition.

/// A run of the virtual disk that lies one for one on the host disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectRun {
    pub start_sector: u64,
    pub sectors: u64,
    /// The host-disk LBA of `start_sector`.
    pub host_lba: u64,
}

/// One target of a device-mapper table (a `linear` target), in the dm device's sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Straight to the host partition, at `partition_sector` of it.
    Host { start_sector: u64, sectors: u64, partition_sector: u64 },
    /// Through the server: the NBD device (the whole virtual disk) at `nbd_sector`.
    Nbd { start_sector: u64, sectors: u64, nbd_sector: u64 },
}

impl Target {
    pub fn start_sector(&self) -> u64 {
        match *self {
            Target::Host { start_sector, .. } | Target::Nbd { start_sector, .. } => start_sector,
        }
    }
    pub fn sectors(&self) -> u64 {
        match *self {
            Target::Host { sectors, .. } | Target::Nbd { sectors, .. } => sectors,
        }
    }
    /// The `linear` target's parameters: the device (`major:minor`, so no /dev node is needed)
    /// and its first sector.
    pub fn linear_params(&self, host_partition: (u32, u32), nbd: (u32, u32)) -> String {
        match *self {
            Target::Host { partition_sector, .. } => format!("{}:{} {}", host_partition.0, host_partition.1, partition_sector),
            Target::Nbd { nbd_sector, .. } => format!("{}:{} {}", nbd.0, nbd.1, nbd_sector),
        }
    }
}

/// The most targets a table gets (docs/vboot-attach.md, "--direct"). A dynamic image filled out
/// of order has one direct run per block, and a table holds its direct runs plus the NBD gaps
/// between them: past this, only the longest direct runs are kept and the rest goes through
/// NBD (correct, just not faster). 16384 targets are about 1.4 MiB for the table load.
pub const MAX_TARGETS: usize = 16384;

/// The host partition the direct runs must lie in: its first LBA on the host disk and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPartition {
    pub start_lba: u64,
    pub sectors: u64,
}

/// What a table came to, for the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSummary {
    pub direct_sectors: u64,
    pub nbd_sectors: u64,
    pub targets: usize,
    /// Direct runs left to NBD because of [`MAX_TARGETS`].
    pub runs_dropped: usize,
}

/// The table for sectors `first_sector..first_sector + sectors` of the virtual disk (the whole
/// disk, or one partition): the direct runs in that range go to the host partition, the rest to
/// the NBD device at the same virtual sector; adjacent runs that continue each other on the host
/// are one target. `runs` are in order and do not overlap (as `VirtualDisk::direct_runs` gives
/// them). A run (or the part of one) outside the host partition stays on NBD: the table never
/// sends a sector anywhere the server would not.
pub fn build_table(runs: &[DirectRun], first_sector: u64, sectors: u64, host: HostPartition, max_targets: usize) -> (Vec<Target>, TableSummary) {
    let end_sector = first_sector + sectors;
    let host_end_lba = host.start_lba + host.sectors;
    // Clip to the range and to the host partition, merging what continues.
    let mut direct: Vec<DirectRun> = Vec::new();
    for r in runs {
        let start = r.start_sector.max(first_sector);
        let end = (r.start_sector + r.sectors).min(end_sector);
        if start >= end {
            continue;
        }
        let lba = r.host_lba + (start - r.start_sector);
        // The part of [lba, lba + n) inside the host partition.
        let lba_from = lba.max(host.start_lba);
        let lba_to = (lba + (end - start)).min(host_end_lba);
        if lba_from >= lba_to {
            continue;
        }
        let clipped = DirectRun { start_sector: start + (lba_from - lba), sectors: lba_to - lba_from, host_lba: lba_from };
        match direct.last_mut() {
            Some(last) if last.start_sector + last.sectors == clipped.start_sector && last.host_lba + last.sectors == clipped.host_lba => {
                last.sectors += clipped.sectors
            }
            _ => direct.push(clipped),
        }
    }
    // k direct runs make at most 2k + 1 targets with the gaps between them.
    let keep = max_targets.saturating_sub(1) / 2;
    let mut runs_dropped = 0;
    if direct.len() > keep {
        runs_dropped = direct.len() - keep;
        direct.sort_by(|a, b| b.sectors.cmp(&a.sectors).then(a.start_sector.cmp(&b.start_sector)));
        direct.truncate(keep);
        direct.sort_by_key(|r| r.start_sector);
    }
    let mut targets = Vec::with_capacity(direct.len() * 2 + 1);
    let mut summary = TableSummary { runs_dropped, ..TableSummary::default() };
    let mut at = first_sector;
    let nbd_gap = |targets: &mut Vec<Target>, from: u64, to: u64, summary: &mut TableSummary| {
        if to > from {
            targets.push(Target::Nbd { start_sector: from - first_sector, sectors: to - from, nbd_sector: from });
            summary.nbd_sectors += to - from;
        }
    };
    for r in &direct {
        nbd_gap(&mut targets, at, r.start_sector, &mut summary);
        targets.push(Target::Host { start_sector: r.start_sector - first_sector, sectors: r.sectors, partition_sector: r.host_lba - host.start_lba });
        summary.direct_sectors += r.sectors;
        at = r.start_sector + r.sectors;
    }
    nbd_gap(&mut targets, at, end_sector, &mut summary);
    summary.targets = targets.len();
    (targets, summary)
}

/// A partition of the virtual disk that gets its own dm device, numbered as Linux numbers it
/// (`nbd0p1`: MBR primaries by slot 1-4, logical partitions from 5, GPT entries from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskPartition {
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
}

/// The dm device names for NBD device `nbd` (`/dev/nbd0`): `vboot-nbd0` for the whole disk and
/// `vboot-nbd0p1` for partition 1, under /dev/mapper/.
pub fn device_name(nbd: &str, partition: Option<u32>) -> String {
    let base = nbd.trim_start_matches("/dev/");
    match partition {
        None => format!("vboot-{}", base),
        Some(n) => format!("vboot-{}p{}", base, n),
    }
}

/// Whether `name` (a dm device's name) is one of ours for NBD device `nbd`.
pub fn is_ours(name: &str, nbd: &str) -> bool {
    let whole = device_name(nbd, None);
    name == whole || name.strip_prefix(&whole).and_then(|r| r.strip_prefix('p')).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostPartition = HostPartition { start_lba: 2048, sectors: 100_000 };

    fn run(start_sector: u64, sectors: u64, host_lba: u64) -> DirectRun {
        DirectRun { start_sector, sectors, host_lba }
    }

    /// Every sector of the range is covered once, in order, and host targets stay in the partition.
    fn assert_covers(targets: &[Target], sectors: u64) {
        let mut at = 0;
        for t in targets {
            assert_eq!(t.start_sector(), at, "{:?}", targets);
            assert!(t.sectors() > 0);
            if let Target::Host { partition_sector, sectors, .. } = *t {
                assert!(partition_sector + sectors <= HOST.sectors);
            }
            at += t.sectors();
        }
        assert_eq!(at, sectors);
    }

    #[test]
    fn direct_runs_go_to_the_host_partition_and_the_gaps_to_nbd() {
        let runs = [run(0, 100, 5000), run(300, 50, 9000)];
        let (t, s) = build_table(&runs, 0, 1000, HOST, MAX_TARGETS);
        assert_eq!(
            t,
            vec![
                Target::Host { start_sector: 0, sectors: 100, partition_sector: 5000 - 2048 },
                Target::Nbd { start_sector: 100, sectors: 200, nbd_sector: 100 },
                Target::Host { start_sector: 300, sectors: 50, partition_sector: 9000 - 2048 },
                Target::Nbd { start_sector: 350, sectors: 650, nbd_sector: 350 },
            ]
        );
        assert_eq!((s.direct_sectors, s.nbd_sectors, s.targets, s.runs_dropped), (150, 850, 4, 0));
        assert_covers(&t, 1000);
        assert_eq!(t[0].linear_params((254, 1), (43, 0)), "254:1 2952");
        assert_eq!(t[1].linear_params((254, 1), (43, 0)), "43:0 100");
    }

    #[test]
    fn runs_that_continue_on_the_host_merge_and_others_do_not() {
        // 0..100 and 100..150 continue each other on the host; 150..200 follows on the disk but
        // not on the host.
        let runs = [run(0, 100, 5000), run(100, 50, 5100), run(150, 50, 7000)];
        let (t, _) = build_table(&runs, 0, 200, HOST, MAX_TARGETS);
        assert_eq!(
            t,
            vec![
                Target::Host { start_sector: 0, sectors: 150, partition_sector: 5000 - 2048 },
                Target::Host { start_sector: 150, sectors: 50, partition_sector: 7000 - 2048 },
            ]
        );
    }

    #[test]
    fn a_partition_gets_the_runs_of_its_range_in_its_own_sectors() {
        // The partition is sectors 2048..6144 of the virtual disk: the first run is cut at its
        // start, the second at its end, the third is outside.
        let runs = [run(1000, 2000, 10_000), run(5000, 2000, 20_000), run(8000, 100, 30_000)];
        let (t, s) = build_table(&runs, 2048, 4096, HOST, MAX_TARGETS);
        assert_eq!(
            t,
            vec![
                Target::Host { start_sector: 0, sectors: 952, partition_sector: 10_000 + 1048 - 2048 },
                Target::Nbd { start_sector: 952, sectors: 2000, nbd_sector: 3000 },
                Target::Host { start_sector: 2952, sectors: 1144, partition_sector: 20_000 - 2048 },
            ]
        );
        assert_eq!(s.direct_sectors + s.nbd_sectors, 4096);
        assert_covers(&t, 4096);
    }

    #[test]
    fn nothing_direct_outside_the_host_partition() {
        // Before the partition, across its end, wholly after it.
        let runs = [run(0, 100, 1000), run(200, 100, 2048 + 100_000 - 40), run(400, 10, 200_000)];
        let (t, s) = build_table(&runs, 0, 500, HOST, MAX_TARGETS);
        assert_eq!(s.direct_sectors, 40);
        assert!(t.contains(&Target::Host { start_sector: 200, sectors: 40, partition_sector: 100_000 - 40 }));
        assert_covers(&t, 500);
    }

    #[test]
    fn no_runs_is_one_nbd_target() {
        let (t, s) = build_table(&[], 0, 1 << 31, HOST, MAX_TARGETS);
        assert_eq!(t, vec![Target::Nbd { start_sector: 0, sectors: 1 << 31, nbd_sector: 0 }]);
        assert_eq!(s.direct_sectors, 0);
    }

    #[test]
    fn too_many_runs_keep_the_longest_and_the_rest_goes_to_nbd() {
        // 1 TiB of 2 MiB blocks allocated out of order: one run per block, each of its own host
        // place (backwards), one in ten longer.
        let block = 4096u64;
        let blocks = 1u64 << 19;
        let host = HostPartition { start_lba: 2048, sectors: blocks * block * 2 };
        let runs: Vec<DirectRun> = (0..blocks).map(|b| run(b * block, if b % 10 == 0 { block } else { block - 1 }, 2048 + (blocks - 1 - b) * block * 2)).collect();
        let (t, s) = build_table(&runs, 0, blocks * block, host, MAX_TARGETS);
        assert!(t.len() <= MAX_TARGETS, "{} targets", t.len());
        let kept = t.iter().filter(|t| matches!(t, Target::Host { .. })).count();
        assert_eq!(kept, (MAX_TARGETS - 1) / 2);
        assert_eq!(s.runs_dropped, blocks as usize - kept);
        // The longest runs were kept.
        assert!(t.iter().all(|t| !matches!(t, Target::Host { sectors, .. } if *sectors != block)));
        let mut at = 0;
        for x in &t {
            assert_eq!(x.start_sector(), at);
            at += x.sectors();
        }
        assert_eq!(at, blocks * block);
    }

    #[test]
    fn names() {
        assert_eq!(device_name("/dev/nbd0", None), "vboot-nbd0");
        assert_eq!(device_name("/dev/nbd12", Some(3)), "vboot-nbd12p3");
        assert!(is_ours("vboot-nbd0", "/dev/nbd0") && is_ours("vboot-nbd0p5", "/dev/nbd0"));
        assert!(!is_ours("vboot-nbd01", "/dev/nbd0") && !is_ours("vboot-nbd0p", "/dev/nbd0") && !is_ours("other", "/dev/nbd0"));
    }
}
