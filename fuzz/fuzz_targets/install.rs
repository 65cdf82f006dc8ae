//! The install record and what `vboot-install` reads from a disk before it writes: stage1's
//! patch area (`StagePatch::read`), `InstallRecord::from_sector`, `read_installed`,
//! `saved_boot_code`, `plan_uninstall`, `engine_blob_header`, and `plan_install` (partition
//! table, the gap or BIOS boot partition, an earlier vboot) with small stand-in stage1/stage2/
//! engine blobs. The disk is sparse, up to 2^40 bytes. Flags (the input's first byte) bit 0:
//! fix the record's CRC at the LBA stage1's patch names, so mutations reach the fields after it.
//! Checks: no panic; a record that parses writes back (`to_sector`) to the same record; every
//! planned write lies inside the disk, is one sector, and never touches a partition.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::block::BlockDevice;
use vboot::install::{self, InstallOptions, InstallRecord, StagePatch};
use vboot_fuzz::{heap, sparse::SparseDisk};

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let mut disk = SparseDisk::parse(data.get(1..).unwrap_or(&[]), 512 << 31);
    let mut s0 = [0u8; 512];
    if disk.read_sectors(0, &mut s0).is_err() {
        return;
    }
    let patch = StagePatch::read(&s0);
    if flags & 1 == 1 && patch.is_vboot() {
        let lba = { patch.stage2_lba }.wrapping_sub(2);
        let mut r = [0u8; 512];
        if disk.read_sectors(lba, &mut r).is_ok() {
            let crc = vboot::crc32::crc32(&r[..508]);
            r[508..].copy_from_slice(&crc.to_le_bytes());
            let _ = disk.write_sectors(lba, &r);
        }
    }
    for lba in [0u64, 1, 2, 3] {
        let mut s = [0u8; 512];
        if disk.read_sectors(lba, &mut s).is_ok() {
            if let Ok(r) = InstallRecord::from_sector(&s) {
                assert_eq!(InstallRecord::from_sector(&r.to_sector()), Ok(r.clone()));
            }
            let _ = install::engine_blob_header(&s);
        }
    }
    heap::start(64 << 20);
    let sectors = disk.sector_count();
    if let Ok((r, _)) = install::read_installed(&mut disk) {
        let _ = (r.record_lba(), r.saved_mbr_lba());
    }
    let _ = install::saved_boot_code(&mut disk);
    let table = vboot::part::read_partitions(&mut disk).ok();
    let check = |what: &str, w: &install::SectorWrite| {
        assert_eq!(w.bytes.len() % 512, 0, "{}: not whole sectors", w.what);
        let n = (w.bytes.len() / 512) as u64;
        assert!(w.lba.checked_add(n).map_or(false, |e| e <= sectors), "{} {} at sector {} passes the end of the disk", what, w.what, w.lba);
        if let Some(t) = &table {
            for p in t.partitions.iter().filter(|p| !p.is_extended()) {
                let inside = w.lba < p.start_lba + p.sectors && p.start_lba < w.lba + n;
                let bios_boot = matches!(&p.kind, vboot::part::PartitionKind::Gpt { type_guid, .. } if *type_guid == vboot::part::GPT_TYPE_BIOS_BOOT);
                assert!(!inside || bios_boot, "{} {} at sector {} writes into partition {}", what, w.what, w.lba, p.number);
            }
        }
    };
    if let Ok((_, writes)) = install::plan_uninstall(&mut disk) {
        for w in &writes {
            check("uninstall", w);
        }
    }
    // Stand-ins for the real blobs: stage1's code, a stage2 with its header, a small engine.
    let stage1 = [0x90u8; 512];
    let mut stage2 = vec![0u8; 8 * 512];
    stage2[4..12].copy_from_slice(&install::STAGE2_MAGIC);
    stage2[12..16].copy_from_slice(&8u32.to_le_bytes());
    stage2[32..36].copy_from_slice(&2u32.to_le_bytes());
    let engine = install::engine_blob(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0]);
    let opts = InstallOptions { config_partition: (flags & 2 == 2).then_some(flags as u32 >> 4), force: flags & 4 == 4, force_chs: flags & 8 == 8 };
    if let Ok(plan) = install::plan_install(&mut disk, &stage1, &stage2, &engine, &opts) {
        for w in &plan.writes {
            check("install", w);
        }
    }
    heap::stop();
});
