//! vboot.lkrn started by other boot loaders (docs/usage.md, "Started by another boot loader"):
//! SYSLINUX's `LINUX` from a floppy, ISOLINUX's `KERNEL` from a CD, GRUB's `linux16` from its rescue CD, PXELINUX and iPXE's
//! `chain` over QEMU's TFTP load it through the Linux boot protocol; vboot's menu comes up and
//! boots an image from a hard disk on which vboot was never installed (drive 80h: the loader's
//! own medium is the floppy, the CD or the network).

use std::path::{Path, PathBuf};
use std::time::Duration;
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::guests;
use vboot_tests::qemu::{Config, Drive, Qemu, EXIT_PASS};
use vboot_tests::TempDir;

const T: Duration = Duration::from_secs(120);

const TWO_GUESTS: &str = "\
set timeout=1
menuentry 'First lkrn guest' {
    vboot harddisk=/one.img
}
menuentry 'Second lkrn guest' {
    vboot harddisk=(hd0,1)/two.img
}
menuentry 'Put the MBR back' {
    vboot recover_mbr
}
";

/// A hard disk with grub.cfg (`cfg` at `cfg_path`) and two guests, without vboot: nothing in its
/// MBR or gap, so no install record either.
fn plain_host(dir: &TempDir, cfg_path: &str, cfg: &str) -> PathBuf {
    let one = guests::hello_guest(&dir.path, "one", "LKRN-GUEST-ONE", 2048);
    let two = guests::hello_guest(&dir.path, "two", "LKRN-GUEST-TWO", 2048);
    disk::mbr_fat32_disk(
        dir,
        64,
        &[
            FileSpec::new(cfg_path, cfg),
            FileSpec::new("/one.img", std::fs::read(one).unwrap()),
            FileSpec::new("/two.img", std::fs::read(two).unwrap()),
        ],
    )
}

/// A SYSLINUX-family config (syslinux.cfg, isolinux.cfg, pxelinux.cfg/default) that boots
/// `file` with `keyword` (LINUX or KERNEL) and `append` as its command line, on the serial line.
fn syslinux_cfg(keyword: &str, file: &str, append: &str) -> String {
    format!("SERIAL 0 115200\nDEFAULT vboot\nPROMPT 0\nTIMEOUT 0\nLABEL vboot\n  {} {}\n  APPEND {}\n", keyword, file, append)
}

/// `loader` (its banner) started vboot.lkrn, whose menu appears and boots the first guest.
fn menu_boots_guest_one(q: &mut Qemu, loader: &str) -> String {
    let out = q.expect("First lkrn guest", T);
    assert!(out.contains(loader), "{}", out);
    assert!(out.contains("Started as vboot.lkrn"), "{}", out);
    q.expect("LKRN-GUEST-ONE", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    out
}

/// QEMU booting the CD `iso`, the hard disk is 80h.
fn cd_boot(host: &Path, iso: PathBuf) -> Qemu {
    let mut cfg = Config::disk(host);
    cfg.drives.push(Drive { path: iso, interface: "ide", media_cdrom: true });
    cfg.extra = vec!["-boot".into(), "d".into()];
    Qemu::start(&cfg)
}

/// SYSLINUX on a floppy, booting vboot.lkrn with `append` as its command line; QEMU boots the
/// floppy, the hard disk is 80h.
fn syslinux_boot(dir: &TempDir, host: &Path, append: &str) -> Qemu {
    syslinux_boot_disks(dir, &[host], append, 128, &vboot_tests::lkrn())
}

/// [`syslinux_boot`] of the vboot.lkrn at `lkrn`, with `disks` as 80h, 81h ... and `memory_mib`.
fn syslinux_boot_disks(dir: &TempDir, disks: &[&Path], append: &str, memory_mib: u32, lkrn: &Path) -> Qemu {
    let cfg = syslinux_cfg("LINUX", "/vboot.lkrn", append);
    let floppy = guests::syslinux_floppy_with(&dir.path, "syslinux", &cfg, &[("/vboot.lkrn", lkrn)]);
    let mut cfg = Config::disk(disks[0]);
    cfg.drives.extend(disks[1..].iter().map(|d| Drive::virtio(d)));
    cfg.memory_mib = memory_mib;
    cfg.drives.push(Drive { path: floppy, interface: "floppy", media_cdrom: false });
    cfg.extra = vec!["-boot".into(), "a".into()];
    Qemu::start(&cfg)
}

#[test]
fn syslinux_linux_starts_vboot_lkrn_whose_menu_boots_an_image_on_the_hard_disk() {
    let dir = TempDir::new("lkrn-syslinux");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let mut q = syslinux_boot(&dir, &host, "config=(hd0,1)/boot/grub/grub.cfg");
    let out = menu_boots_guest_one(&mut q, "SYSLINUX");
    // SYSLINUX adds BOOT_IMAGE=; vboot lists it and goes on.
    assert!(out.contains("not vboot's, ignored: BOOT_IMAGE=/vboot.lkrn"), "{}", out);
    assert!(out.contains("as config= says"), "{}", out);
}

/// Without `config=`, grub.cfg is searched for on every BIOS hard disk; `entry=1` boots the
/// second entry at once.
#[test]
fn without_config_grub_cfg_is_found_on_the_hard_disks_and_entry_picks_the_entry() {
    let dir = TempDir::new("lkrn-search");
    let host = plain_host(&dir, "/grub/grub.cfg", &TWO_GUESTS.replace("set timeout=1", "set timeout=-1"));
    let mut q = syslinux_boot(&dir, &host, "entry=1");
    let out = q.expect("LKRN-GUEST-TWO", T);
    assert!(out.contains("Reading (hd0,1)/grub/grub.cfg"), "{}", out);
    assert!(!out.contains("LKRN-GUEST-ONE"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// A `config=` naming a file or a partition that is not there: the message says which, and a
/// key tries again (no hang, no reboot); `recover_mbr` is refused (no install record).
#[test]
fn config_naming_a_missing_file_or_partition_is_refused_with_a_message() {
    let dir = TempDir::new("lkrn-missing");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let mut q = syslinux_boot(&dir, &host, "config=(hd0,1)/nowhere/grub.cfg");
    let out = q.expect("Press any key to try again", T);
    assert!(out.contains("config=(hd0,1)/nowhere/grub.cfg: no such grub.cfg ((hd0,1)/nowhere/grub.cfg: not found)"), "{}", out);
    q.kill();

    let mut q = syslinux_boot(&dir, &host, "config=(hd0,3)/boot/grub/grub.cfg");
    let out = q.expect("Press any key to try again", T);
    assert!(out.contains("partition (hd0,3) does not exist"), "{}", out);
    q.kill();

    let cfg = TWO_GUESTS.replace("set timeout=1", "set timeout=-1");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", &cfg);
    let mut q = syslinux_boot(&dir, &host, "config=(hd0,1)/boot/grub/grub.cfg");
    q.expect("Put the MBR back", T);
    q.send(b"3");
    let out = q.expect("Press any key to return to the menu", T);
    assert!(out.contains("recover_mbr: vboot was started as vboot.lkrn"), "{}", out);
    q.send(b"\r");
    std::thread::sleep(Duration::from_millis(500));
    q.send(b"1");
    q.expect("LKRN-GUEST-ONE", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// ISOLINUX from a CD (no emulation): `KERNEL vboot.lkrn` with `APPEND`.
#[test]
fn isolinux_kernel_starts_vboot_lkrn_from_a_cd() {
    let dir = TempDir::new("lkrn-isolinux");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let tree = dir.join("cd-tree");
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    std::fs::copy(guests::ISOLINUX_BIN, tree.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(guests::LDLINUX_C32, tree.join("isolinux/ldlinux.c32")).unwrap();
    std::fs::copy(vboot_tests::lkrn(), tree.join("vboot.lkrn")).unwrap();
    std::fs::write(tree.join("isolinux/isolinux.cfg"), syslinux_cfg("KERNEL", "/vboot.lkrn", "config=(hd0,1)/boot/grub/grub.cfg entry=1")).unwrap();
    let iso = guests::make_iso(
        &tree,
        &dir.join("isolinux.iso"),
        &["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"],
    );
    let mut q = cd_boot(&host, iso);
    let out = q.expect("LKRN-GUEST-TWO", T);
    assert!(out.contains("ISOLINUX"), "{}", out);
    assert!(out.contains("Started as vboot.lkrn"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// The iPXE ROM Debian builds for QEMU's e1000 (package ipxe-qemu): SeaBIOS's network boot.
const E1000_ROM: &str = "/usr/lib/ipxe/qemu/pxe-e1000.rom";

/// A network boot over QEMU's user network: its TFTP server serves `tftp`, DHCP names
/// `bootfile`, the e1000's iPXE ROM boots it; the hard disk is 80h.
fn net_boot(host: &Path, tftp: &Path, bootfile: &str) -> Qemu {
    assert!(Path::new(E1000_ROM).exists(), "{} is missing: install the Debian package ipxe-qemu", E1000_ROM);
    let mut cfg = Config::disk(host);
    cfg.extra = vec![
        "-netdev".into(),
        format!("user,id=n,tftp={},bootfile={}", tftp.display(), bootfile),
        "-device".into(),
        format!("e1000,netdev=n,romfile={}", E1000_ROM),
        "-boot".into(),
        "n".into(),
    ];
    Qemu::start(&cfg)
}

/// PXELINUX from QEMU's TFTP server: `LINUX vboot.lkrn` in pxelinux.cfg/default.
#[test]
fn pxelinux_starts_vboot_lkrn_over_tftp_and_an_image_on_the_local_disk_boots() {
    const PXELINUX: &str = "/usr/lib/PXELINUX/pxelinux.0";
    assert!(Path::new(PXELINUX).exists(), "{} is missing: install the Debian package pxelinux", PXELINUX);
    let dir = TempDir::new("lkrn-pxelinux");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(tftp.join("pxelinux.cfg")).unwrap();
    std::fs::copy(PXELINUX, tftp.join("pxelinux.0")).unwrap();
    std::fs::copy(guests::LDLINUX_C32, tftp.join("ldlinux.c32")).unwrap();
    std::fs::copy(vboot_tests::lkrn(), tftp.join("vboot.lkrn")).unwrap();
    std::fs::write(tftp.join("pxelinux.cfg/default"), syslinux_cfg("LINUX", "vboot.lkrn", "config=(hd0,1)/boot/grub/grub.cfg")).unwrap();
    let mut q = net_boot(&host, &tftp, "pxelinux.0");
    menu_boots_guest_one(&mut q, "PXELINUX");
}

/// iPXE's own `chain` (a script the ROM fetches by TFTP), with a command line after the file.
#[test]
fn ipxe_chain_starts_vboot_lkrn() {
    let dir = TempDir::new("lkrn-ipxe");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::copy(vboot_tests::lkrn(), tftp.join("vboot.lkrn")).unwrap();
    std::fs::write(tftp.join("boot.ipxe"), "#!ipxe\nchain vboot.lkrn config=(hd0,1)/boot/grub/grub.cfg entry=1\n").unwrap();
    let mut q = net_boot(&host, &tftp, "boot.ipxe");
    let out = q.expect("LKRN-GUEST-TWO", T);
    assert!(out.contains("command line: config=(hd0,1)/boot/grub/grub.cfg entry=1"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// GRUB 2's `linux16` from its rescue CD: the hard disk is (hd0), 80h.
#[test]
fn grub_linux16_starts_vboot_lkrn_whose_menu_boots_an_image_on_the_hard_disk() {
    let dir = TempDir::new("lkrn-grub");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let lkrn = std::fs::read(vboot_tests::lkrn()).unwrap();
    let script = "echo VBOOT-GRUB-LINUX16\nlinux16 /vboot.lkrn config=(hd0,1)/boot/grub/grub.cfg entry=1\nboot\necho VBOOT-GRUB-FAILED\noutb 0xf4 0x11";
    let iso = guests::grub_rescue_iso(&dir.path, "rescue-lkrn", script, &[("/vboot.lkrn", &lkrn)]);
    let mut q = cd_boot(&host, iso);
    let out = q.expect("LKRN-GUEST-TWO", T);
    assert!(out.contains("VBOOT-GRUB-LINUX16"), "{}", out);
    assert!(out.contains("Started as vboot.lkrn"), "{}", out);
    assert!(out.contains("entry=1: booted without waiting"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// A BIOS that boots vboot.lkrn itself (as a disk) gets a line saying what the file is.
#[test]
fn booted_by_the_bios_vboot_lkrn_says_it_needs_a_boot_loader() {
    let dir = TempDir::new("lkrn-bios");
    let disk = dir.join("lkrn.img");
    let mut bytes = std::fs::read(vboot_tests::lkrn()).unwrap();
    bytes.resize(bytes.len().next_multiple_of(1 << 20), 0);
    std::fs::write(&disk, bytes).unwrap();
    let mut cfg = Config::disk(&disk);
    cfg.sercon = true;
    let mut q = Qemu::start(&cfg);
    q.expect("vboot.lkrn is started by a boot loader", T);
    assert_eq!(q.wait_exit(Duration::from_secs(3)), None, "it should wait, not reset");
}

/// After the menu nothing differs: `take_snapshot=` makes a VMDK child and rewrites the grub.cfg
/// that `config=` named (not one of the usual paths), and the probe passes on the child.
#[test]
fn take_snapshot_works_from_vboot_lkrn_and_rewrites_the_named_config() {
    let dir = TempDir::new("lkrn-snapshot");
    let mut probe_cfg = guests::ProbeConfig::new(16 * 2048);
    probe_cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    probe_cfg.writes = vec![guests::ProbeWrite { lba: 9000, sectors: 16 }];
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &probe_cfg);
    let base = dir.join("base.vmdk");
    vboot_tests::qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw.to_str().unwrap(), base.to_str().unwrap()]);
    let cfg = "set timeout=0\nset default=1\nmenuentry 'XP' {\n    vboot harddisk=/vm/base.vmdk\n}\n\
menuentry 'XP: take a snapshot' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=/vm/s1.vmdk boot_entry=0 reserve=4M\n}\n";
    let host = disk::mbr_fat32_disk(&dir, 96, &[FileSpec::new("/boot/vboot.cfg", cfg), FileSpec::new("/vm/base.vmdk", std::fs::read(&base).unwrap())]);
    let mut q = syslinux_boot_disks(&dir, &[&host], "config=(hd0,1)/boot/vboot.cfg", 256, &vboot_tests::lkrn());
    let out = q.expect(guests::PROBE_PASS, T);
    assert!(out.contains("snapshot: /vm/s1.vmdk made, a VMDK child of /vm/base.vmdk"), "{}", out);
    assert!(out.contains("grub.cfg: (hd0,1)/boot/vboot.cfg rewritten to boot /vm/s1.vmdk"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    let part = dir.join("part-after.img");
    disk::partition_of(&host, 96 * 2048 - 2048, &part);
    let got = dir.join("vboot.cfg");
    disk::fat_get(&part, "/boot/vboot.cfg", &got);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), cfg.replace("vboot harddisk=/vm/base.vmdk\n", "vboot harddisk=/vm/s1.vmdk\n"));
}

/// A vboot.lkrn whose engine was damaged after it was built: the menu comes up (stage2 is
/// whole), an entry is refused with the engine's CRC-32 message before anything is hooked, and a
/// key brings the menu back.
#[test]
fn a_damaged_engine_in_vboot_lkrn_is_refused_at_boot_with_the_menu_back() {
    let dir = TempDir::new("lkrn-damaged");
    let host = plain_host(&dir, "/boot/grub/grub.cfg", &TWO_GUESTS.replace("set timeout=1", "set timeout=-1"));
    let mut bytes = std::fs::read(vboot_tests::lkrn()).unwrap();
    let real = (bytes[0x1F1] as usize + 1) * 512;
    let stage2 = vboot::install::Stage2Header::parse(&bytes[0x400..]).expect("stage2's low part at 0x400");
    let engine_at = real + (stage2.sectors - stage2.load_sectors) as usize * 512;
    assert_eq!(&bytes[engine_at..engine_at + 8], &vboot::install::ENGINE_MAGIC);
    bytes[engine_at + 512 + 4096] ^= 0x5A;
    let damaged = dir.join("vboot.lkrn");
    std::fs::write(&damaged, bytes).unwrap();
    let mut q = syslinux_boot_disks(&dir, &[&host], "config=(hd0,1)/boot/grub/grub.cfg", 128, &damaged);
    q.expect("Second lkrn guest", T);
    q.send(b"1");
    let out = q.expect("Press any key to return to the menu", T);
    assert!(out.contains("the resident engine in vboot.lkrn is damaged (CRC-32"), "{}", out);
    assert!(!out.contains("LKRN-GUEST-ONE"), "{}", out);
    let mark = q.mark();
    q.send(b"\r");
    q.expect_from(mark, "Second lkrn guest", T);
}

/// grub.cfg on the second hard disk (81h), found without `config=` after the first (80h) has
/// none: that disk is vboot's boot disk, and its image boots as 80h.
#[test]
fn grub_cfg_on_the_second_hard_disk_is_found_and_its_image_boots() {
    let dir = TempDir::new("lkrn-second");
    let empty_dir = TempDir::new("lkrn-second-empty");
    let empty = disk::mbr_fat32_disk(&empty_dir, 16, &[FileSpec::new("/readme.txt", "no grub.cfg here")]);
    let host = plain_host(&dir, "/boot/grub/grub.cfg", TWO_GUESTS);
    let mut q = syslinux_boot_disks(&dir, &[&empty, &host], "", 128, &vboot_tests::lkrn());
    let out = q.expect("LKRN-GUEST-ONE", T);
    assert!(out.contains("Partitions of 0x80"), "{}", out);
    assert!(out.contains("Partitions of 0x81"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

/// No `config=` and no grub.cfg on any hard disk: the disks looked at are listed, with the way to
/// name the file, and a key looks again.
#[test]
fn no_grub_cfg_on_any_disk_says_where_it_looked() {
    let dir = TempDir::new("lkrn-none");
    let empty = disk::mbr_fat32_disk(&dir, 16, &[FileSpec::new("/readme.txt", "no grub.cfg here")]);
    let mut q = syslinux_boot(&dir, &empty, "quiet");
    let out = q.expect("Press any key to try again", T);
    assert!(out.contains("no grub.cfg on any BIOS hard disk; give its place on vboot.lkrn's command line"), "{}", out);
    assert!(out.contains("0x80: no grub.cfg found. Looked in:"), "{}", out);
    let mark = q.mark();
    q.send(b"\r");
    q.expect_from(mark, "Press any key to try again", T);
}
