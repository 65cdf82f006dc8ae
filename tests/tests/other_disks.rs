//! Images on any BIOS hard disk (issue 16): vboot installed on the first disk, the image files
//! on a partition of the second, named `(hd1,1)/...` as GRUB numbers disks. The guest boots from
//! the image as drive 80h with the real disks moved up; its writes land in the file on the
//! second disk (read back by qemu-img); snapshots go next to their parent on that disk; refusals
//! name the disk and partition as written and lead back to the menu.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, BigIoConfig, BigOp, ProbeConfig, ProbeWrite};
use vboot_tests::large::{self, Reader, GIB};
use vboot_tests::qemu::{Config, Drive, Qemu, EXIT_PASS};
use vboot_tests::rig::fsck_clean;
use vboot_tests::{disk, sh, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(120);
/// The second disk's layout: partition 1 (FAT) at 1 MiB, partition 2 (no filesystem) after it.
const DATA_PART_START_LBA: u64 = 2048;
const DATA_PART_MIB: u64 = 64;
const EMPTY_PART_MIB: u64 = 4;
/// MBR disk signature of the second disk when it has an MBR.
const DATA_DISK_SIGNATURE: u32 = 0x5EC0_D15C;

fn data_part_sectors() -> u64 {
    DATA_PART_MIB * 2048
}

/// A second hard disk as a user makes one: `scheme` "dos" or "gpt", partition 1 a FAT32 volume
/// holding `files` (path on the volume, local file; files of 1 MiB and more in 3 fragments),
/// partition 2 with no filesystem. Returns the disk image.
fn data_disk(dir: &TempDir, scheme: &str, files: &[(&str, &Path)]) -> PathBuf {
    let part = dir.join("data-part.img");
    disk::fat_volume(&part, data_part_sectors(), 32, &[]);
    for (path, file) in files {
        let dir_path = Path::new(path).parent().unwrap().to_str().unwrap().to_string();
        if dir_path != "/" {
            let _ = Command::new("mmd").arg("-i").arg(&part).arg(format!("::{}", dir_path)).env("MTOOLS_SKIP_CHECK", "1").output();
        }
        let bytes = std::fs::read(file).unwrap();
        if bytes.len() >= 1 << 20 {
            disk::put_fragmented(&part, path, &bytes, 3);
        } else {
            sh(Command::new("mcopy").arg("-o").arg("-i").arg(&part).arg(file).arg(format!("::{}", path)).env("MTOOLS_SKIP_CHECK", "1"));
        }
    }
    let disk_path = dir.join("data-disk.img");
    // One MiB in front, one behind (GPT's backup table).
    disk::blank(&disk_path, 1 + DATA_PART_MIB + EMPTY_PART_MIB + 1);
    let empty_start = DATA_PART_START_LBA + data_part_sectors();
    let script = match scheme {
        "dos" => format!(
            "label: dos\nlabel-id: {:#010x}\nstart={}, size={}, type=c\nstart={}, size={}, type=83\n",
            DATA_DISK_SIGNATURE,
            DATA_PART_START_LBA,
            data_part_sectors(),
            empty_start,
            EMPTY_PART_MIB * 2048
        ),
        _ => format!(
            "label: gpt\nstart={}, size={}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
            DATA_PART_START_LBA,
            data_part_sectors(),
            empty_start,
            EMPTY_PART_MIB * 2048
        ),
    };
    disk::sfdisk(&disk_path, &script);
    disk::write_at(&disk_path, DATA_PART_START_LBA, &part);
    let _ = std::fs::remove_file(&part);
    disk_path
}

/// Partition 1 of the second disk as it is now, in `out`, after `fsck.fat -n` passed on it.
fn data_partition_now(data_disk: &Path, out: &Path) -> PathBuf {
    let bytes = std::fs::read(data_disk).unwrap();
    let start = (DATA_PART_START_LBA * 512) as usize;
    std::fs::write(out, &bytes[start..start + (data_part_sectors() * 512) as usize]).unwrap();
    fsck_clean(out);
    out.to_path_buf()
}

/// The machine: vboot's disk first (80h), the data disk second (81h), both virtio-blk.
fn machine(boot_disk: &Path, data_disk: &Path) -> Config {
    let mut cfg = Config::disk(boot_disk);
    cfg.drives.push(Drive::virtio(data_disk));
    cfg.memory_mib = 256;
    cfg
}

fn one_entry(line: &str) -> String {
    format!("set timeout=0\nmenuentry 'guest' {{\n    vboot {}\n}}\n", line)
}

/// Boot and require the guest's pass code after `lines`; returns the output.
fn boot_passing(cfg: &Config, lines: &[&str]) -> String {
    let mut q = Qemu::start(cfg);
    let status = q.wait_exit(T);
    let out = q.output();
    for l in lines {
        assert!(out.contains(l), "expected {:?} (exit {:?}):\n{}", l, status, out);
    }
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    out
}

fn probe_config(total: u64) -> ProbeConfig {
    let mut cfg = ProbeConfig::new(total);
    cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    cfg.boundaries_lba = vec![4095, 4096, (total / 2) as u32];
    cfg.writes = vec![
        ProbeWrite { lba: 100, sectors: 1 },
        ProbeWrite { lba: 5000, sectors: 16 },
        ProbeWrite { lba: total as u32 - 1, sectors: 1 },
    ];
    cfg
}

/// The probe in a raw disk of `total` sectors, converted by qemu-img to `fmt` with `opts`.
fn probe_image(dir: &TempDir, cfg: &ProbeConfig, fmt: &str, opts: &str, name: &str) -> PathBuf {
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.raw");
    guests::make_probe_disk(&raw, &probe, cfg);
    let img = dir.join(name);
    sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw).arg(&img));
    let _ = std::fs::remove_file(&raw);
    img
}

/// `image` (a chain's leaf, in qemu format `fmt`) read by qemu-img as a raw disk of `total`
/// sectors must hold what the probe left.
fn check_probe_writes(image: &Path, fmt: &str, cfg: &ProbeConfig, out: &str) {
    let back = image.with_extension("back.raw");
    sh(Command::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(image).arg(&back));
    std::fs::OpenOptions::new().write(true).open(&back).unwrap().set_len(cfg.total_sectors as u64 * 512).unwrap();
    guests::check_probe_disk(&back, cfg).unwrap_or_else(|e| panic!("{}: {}\n{}", image.display(), e, out));
}

/// A dynamic VHD (made by qemu-img) on the second disk's first partition boots with vboot
/// installed on the first disk: the probe passes, its writes are in the file on the second disk
/// (qemu-img reads them back, vdisk check is clean, fsck.fat too), and the first disk is not
/// written at all.
#[test]
fn a_vhd_on_the_second_disk_boots_and_takes_the_writes() {
    let dir = TempDir::new("other-vhd");
    let total = 16 * 2048;
    let cfg = probe_config(total);
    let vhd = probe_image(&dir, &cfg, "vpc", "subformat=dynamic,force_size=on", "probe.vhd");
    let host = vboot_host(&dir, 64, &one_entry("harddisk=(hd1,1)/vm/probe.vhd reserve=4M"), &[]);
    let data = data_disk(&dir, "dos", &[("/vm/probe.vhd", &vhd)]);
    let boot_disk_before = disk::sha256(&host.disk);

    let out = boot_passing(
        &machine(&host.disk, &data),
        &["Partitions of 0x81 (MBR, 2 found)", "hard disk image: (hd1,1)/vm/probe.vhd", "the image's disk 0x81 is now 0x82", guests::PROBE_PASS],
    );
    // The probe ran from drive 80h.
    assert!(out.contains("PROBE start, boot drive 80"), "{}", out);

    let part = data_partition_now(&data, &dir.join("data-part-now.img"));
    let back = dir.join("probe-now.vhd");
    disk::fat_get(&part, "/vm/probe.vhd", &back);
    vboot_tests::vdisk_check(&back, "the VHD on the second disk: ");
    check_probe_writes(&back, "vpc", &cfg, &out);
    assert_eq!(disk::sha256(&host.disk), boot_disk_before, "the boot disk changed; only the second disk holds the image");
}

/// The guest sees the image as 80h and the real disks moved up: 81h is vboot's disk, 82h the
/// disk the image is on (a GPT disk), each with its own size and sector 0 (its MBR signature),
/// and the BIOS data area and AH=08h count three hard disks.
#[test]
fn the_image_is_80h_and_the_real_disks_move_up() {
    let dir = TempDir::new("other-numbering");
    let guest_sectors = 4 * 2048;
    let guest_signature = 0x0123_4567;
    let guest = guests::drives_guest(&dir.path, "drives", guest_signature, guest_sectors);
    let host = vboot_host(&dir, 64, &one_entry("harddisk=(hd1,gpt1)/vm/drives.img"), &[]);
    let data = data_disk(&dir, "gpt", &[("/vm/drives.img", &guest)]);
    let sector0 = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        (b.len() as u32 / 512, u32::from_le_bytes(b[440..444].try_into().unwrap()))
    };
    let (boot_sectors, boot_signature) = sector0(&host.disk);
    let (data_sectors, data_signature) = sector0(&data);

    let out = boot_passing(&machine(&host.disk, &data), &["Partitions of 0x81 (GPT, 2 found)", guests::DRIVES_DONE]);
    let report = guests::parse_drives_report(&out).unwrap_or_else(|| panic!("no drive report:\n{}", out));
    assert_eq!(report.boot_drive, 0x80, "{}", out);
    assert_eq!((report.count_bda, report.count_08h), (3, 3), "{}", out);
    assert_eq!(
        report.drives,
        vec![(0x80, guest_sectors as u32, guest_signature), (0x81, boot_sectors, boot_signature), (0x82, data_sectors, data_signature)],
        "{}",
        out
    );
}

/// A CD image on the second disk beside a hard-disk image on the first: boot=cdrom starts
/// ISOLINUX from the ISO on (hd1,1), read through the engine from the second disk. And a floppy
/// image on the second disk boots as A:.
#[test]
fn a_cd_and_a_floppy_on_the_second_disk_boot() {
    let dir = TempDir::new("other-cd");
    let iso = guests::isolinux_iso(&dir.path, "cd", "GUEST-FROM-THE-CD-ON-HD1", false);
    let floppy = guests::syslinux_floppy(&dir.path, "floppy", "GUEST-FROM-THE-FLOPPY-ON-HD1");
    let hd = guests::hello_guest(&dir.path, "hd", "GUEST-FROM-THE-HARD-DISK", 2048);
    let host = vboot_host(&dir, 64, &one_entry("harddisk=/hd.img cdrom=(hd1,1)/iso/cd.iso boot=cdrom"), &[HostImage { path: "/hd.img", file: &hd, pieces: 1 }]);
    let data = data_disk(&dir, "dos", &[("/iso/cd.iso", &iso), ("/floppy.img", &floppy)]);
    let out = boot_passing(&machine(&host.disk, &data), &["CD-ROM image: (hd1,1)/iso/cd.iso", "hard disk image: (hd0,1)/hd.img", "no emulation", "GUEST-FROM-THE-CD-ON-HD1"]);
    assert!(!out.contains("GUEST-FROM-THE-HARD-DISK"), "{}", out);

    let d2 = TempDir::new("other-floppy");
    let host = vboot_host(&d2, 64, &one_entry("floppy=(hd1,msdos1)/floppy.img"), &[]);
    let data = data_disk(&d2, "dos", &[("/floppy.img", &floppy)]);
    boot_passing(&machine(&host.disk, &data), &["floppy image: (hd1,1)/floppy.img", "GUEST-FROM-THE-FLOPPY-ON-HD1"]);
}

/// Every refusal names the disk and partition as written and leads back to the menu: no such
/// disk, no such partition, no filesystem, no such file, a whole disk, a snapshot or parent_dir=
/// off the image's partition, a config_file= on the second disk that is not there (nothing
/// made). Then a snapshot on the second disk: the child is made next to its parent on (hd1,1),
/// grub.cfg on the first disk is rewritten to boot it, the probe passes in it, and qemu-img finds
/// child and parent sound, the writes in the child and the parent unchanged. And `restore` of a
/// child on the second disk empties it there.
#[test]
fn refusals_name_the_disk_and_a_snapshot_goes_next_to_its_parent() {
    let dir = TempDir::new("other-refusals");
    let total = 16 * 2048;
    let cfg = probe_config(total);
    let vmdk = probe_image(&dir, &cfg, "vmdk", "subformat=monolithicSparse", "probe.vmdk");
    let entries = [
        ("No disk", "harddisk=(hd3,1)/vm/probe.vmdk"),
        ("No partition", "harddisk=(hd1,7)/vm/probe.vmdk"),
        ("No filesystem", "harddisk=(hd1,2)/vm/probe.vmdk"),
        ("No file", "harddisk=(hd1,1)/vm/missing.vmdk"),
        ("Whole disk", "harddisk=(hd1)/vm/probe.vmdk"),
        ("Snapshot elsewhere", "harddisk=(hd1,1)/vm/probe.vmdk take_snapshot=/vm/snap.vmdk"),
        ("Parents elsewhere", "harddisk=(hd1,1)/vm/probe.vmdk parent_dir=(hd0,1)/vm"),
        ("No grub.cfg there", "harddisk=(hd1,1)/vm/probe.vmdk take_snapshot=(hd1,1)/vm/snap0.vmdk config_file=(hd1,1)/boot/grub/grub.cfg boot_entry=0"),
        ("Take a snapshot", "harddisk=(hd1,1)/vm/probe.vmdk take_snapshot=(hd1,1)/vm/snap.vmdk config_file=(hd0,1)/boot/grub/grub.cfg reserve=4M"),
    ];
    let grub_cfg = vboot_tests::rig::menu(&entries.iter().map(|(t, l)| (*t, l.to_string())).collect::<Vec<_>>());
    let host = vboot_host(&dir, 64, &grub_cfg, &[]);
    let data = data_disk(&dir, "dos", &[("/vm/probe.vmdk", &vmdk)]);
    let parent_before = std::fs::read(&vmdk).unwrap();

    let mut q = Qemu::start(&machine(&host.disk, &data));
    q.expect("Take a snapshot", T);
    q.expect_refusals(
        "Take a snapshot",
        &[
            (b"1", "hard disk (hd3,1)/vm/probe.vmdk: disk (hd3) does not exist: the BIOS reports 2 hard disk(s), (hd0) to (hd1)"),
            (b"2", "partition (hd1,7) does not exist; (hd1) has 1, 2"),
            (b"3", "hard disk (hd1,2)/vm/probe.vmdk: (hd1,2): not a filesystem vboot reads"),
            (b"4", "hard disk image /vm/missing.vmdk not found on (hd1,1)"),
            (b"5", "a file needs a partition, as in (hd1,1)/vm/probe.vmdk"),
            (b"6", "the snapshot must be on the image's partition (hd1,1), next to its parents: write take_snapshot=(hd1,1)/vm/snap.vmdk"),
            (b"7", "parent_dir=(hd0,1)/vm: it must be on the image's partition (hd1,1)"),
            (b"8", "config_file (hd1,1)/boot/grub/grub.cfg: "),
        ],
        T,
    );
    let out = q.boot_from_menu("Take a snapshot", b'9', guests::PROBE_PASS, T);
    assert!(out.contains("snapshot: /vm/snap.vmdk made"), "{}", out);
    assert!(out.contains("grub.cfg: (hd0,1)/boot/grub/grub.cfg rewritten to boot (hd1,1)/vm/snap.vmdk"), "{}", out);

    // grub.cfg on the first disk now boots the child on the second.
    let cfg_now = dir.join("grub.cfg.now");
    disk::fat_get(&host.current_partition(&dir.join("host-part-now.img")), "/boot/grub/grub.cfg", &cfg_now);
    let text = std::fs::read_to_string(&cfg_now).unwrap();
    assert!(text.contains("vboot harddisk=(hd1,1)/vm/snap.vmdk reserve=4M"), "{}", text);

    let part = data_partition_now(&data, &dir.join("data-part-now.img"));
    let pulled = dir.join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    for name in ["probe.vmdk", "snap.vmdk"] {
        disk::fat_get(&part, &format!("/vm/{}", name), &pulled.join(name));
    }
    assert!(std::fs::read(pulled.join("probe.vmdk")).unwrap() == parent_before, "the parent changed");
    // The refused snapshot (no grub.cfg to rewrite on (hd1,1)) left nothing behind.
    let listing = sh(Command::new("mdir").arg("-b").arg("-i").arg(&part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    assert!(!listing.to_lowercase().contains("snap0"), "a refused snapshot was made:\n{}", listing);
    vboot_tests::qemu_img_check(&pulled.join("snap.vmdk"), "the snapshot child: ");
    // qemu follows the child's parentFileNameHint to the parent beside it.
    check_probe_writes(&pulled.join("snap.vmdk"), "vmdk", &cfg, &out);

    // restore on the second disk: the engine empties the child there (through BIOS drive 81h,
    // as the BIOS numbered it), and the guest reads the parent again. With no writes this time,
    // the child ends up reading exactly as its parent.
    let mut quiet = cfg.clone();
    quiet.writes.clear();
    // The probe reads where qemu-io writes into the child below: the parent's pattern must be
    // back there.
    quiet.boundaries_lba = vec![2048, 2100, 2175];
    let d2 = TempDir::new("other-restore");
    // Parent and child side by side, so that the child's relative parent link is the file name.
    let quiet_vmdk = d2.join("quiet.vmdk");
    std::fs::rename(probe_image(&dir, &quiet, "vmdk", "subformat=monolithicSparse", "quiet.vmdk"), &quiet_vmdk).unwrap();
    let grub_cfg = one_entry("harddisk=(hd1,1)/vm/child.vmdk restore");
    let host = vboot_host(&d2, 64, &grub_cfg, &[]);
    let child = d2.join("child.vmdk");
    sh(Command::new(vboot_tests::vdisk_bin()).arg("snapshot").arg(&quiet_vmdk).arg(&child).args(["--reserve", "4M"]));
    sh(Command::new("qemu-io").args(["-f", "vmdk", "-c", "write -P 0x55 1M 64k"]).arg(&child));
    let data = data_disk(&d2, "dos", &[("/vm/quiet.vmdk", &quiet_vmdk), ("/vm/child.vmdk", &child)]);
    let out = boot_passing(&machine(&host.disk, &data), &["restore: /vm/child.vmdk will be emptied", guests::PROBE_PASS]);
    let part = data_partition_now(&data, &d2.join("data-part-now.img"));
    let pulled = d2.join("pulled");
    std::fs::create_dir_all(&pulled).unwrap();
    for name in ["quiet.vmdk", "child.vmdk"] {
        disk::fat_get(&part, &format!("/vm/{}", name), &pulled.join(name));
    }
    vboot_tests::qemu_img_check(&pulled.join("child.vmdk"), "the restored child: ");
    let same = Command::new("qemu-img").args(["compare", "-q"]).arg(pulled.join("quiet.vmdk")).arg(pulled.join("child.vmdk")).status().unwrap();
    assert!(same.success(), "after restore the child still differs from its parent:\n{}", out);
}

/// Real sizes: a 100 GiB dynamic VHD (qemu-img) on the second disk. The big-disk guest sees all
/// of it, writes at 16 GiB and at the end, reads its writes back; qemu-img finds them in the
/// file afterwards.
#[test]
fn a_100_gib_vhd_on_the_second_disk() {
    let dir = TempDir::new("other-100g");
    let vhd = dir.join("big.vhd");
    vboot_tests::qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", vhd.to_str().unwrap(), &(100 * GIB).to_string()]);
    let total = large::vdisk_sectors(&vhd);
    assert_eq!(total, large::qemu_sectors(&vhd), "vdisk and qemu-img disagree on the size");
    let (alloc, end) = (16 * GIB / 512, total - 8);
    let ops = vec![
        BigOp::Fill { lba: alloc, sectors: 8, byte: 0 },
        BigOp::Write { lba: alloc, sectors: 8 },
        BigOp::Write { lba: end, sectors: 8 },
        BigOp::Pattern { lba: alloc, sectors: 8 },
        BigOp::Pattern { lba: end, sectors: 8 },
    ];
    let big = BigIoConfig { tag: 0x1601, ops, bench: None };
    let code = guests::build_bigio_guest(&dir.join("bigio-build"));
    let head = dir.join("head.bin");
    std::fs::write(&head, guests::bigio_guest_sectors(&code, &big)).unwrap();
    vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 {}", head.display(), std::fs::metadata(&head).unwrap().len())]);

    let host = vboot_host(&dir, 64, &one_entry("harddisk=(hd1,1)/big.vhd reserve=8M"), &[]);
    let data = data_disk(&dir, "dos", &[("/big.vhd", &vhd)]);
    let out = boot_passing(&machine(&host.disk, &data), &["hard disk image: (hd1,1)/big.vhd", guests::BIGIO_PASS]);
    assert_eq!(guests::bigio_disk_sectors(&out), Some(total), "the guest saw another disk size:\n{}", out);
    for op in &big.ops {
        assert!(out.contains(&op.ok_line()), "no {:?}:\n{}", op.ok_line(), out);
    }

    let part = data_partition_now(&data, &dir.join("data-part-now.img"));
    let back = dir.join("big-now.vhd");
    disk::fat_get(&part, "/big.vhd", &back);
    vboot_tests::vdisk_check(&back, "the 100 GiB VHD: ");
    for lba in [alloc, end] {
        let got = large::read_range(&back, &Reader::Qemu("vpc"), lba, 8, &dir.path);
        let want: Vec<u8> = (lba..lba + 8).flat_map(|s| big.written(s)).collect();
        assert!(got == want, "sector {} does not hold the guest's write as qemu-img reads it", lba);
    }
}
