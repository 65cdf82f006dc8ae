//! The boot menu driven over the serial console, and its error screens (issue 3), booting small
//! guests through the INT 13h hook.

use std::time::Duration;
use vboot_tests::guests;
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(60);

fn menu_host(dir: &TempDir, cfg: &str) -> vboot_tests::Host {
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let two = guests::hello_guest(&dir.path, "two", "GUEST-TWO", 2048);
    vboot_host(
        dir,
        64,
        cfg,
        &[
            HostImage { path: "/one.img", file: &one, pieces: 1 },
            HostImage { path: "/two.img", file: &two, pieces: 1 },
        ],
    )
}

const THREE_ENTRIES: &str = "\
set timeout=-1
menuentry 'First guest' {
    vboot harddisk=/one.img
}
menuentry 'Second guest' --id second {
    insmod part_msdos
    vboot harddisk=(hd0,1)/two.img
}
menuentry 'Missing image' {
    vboot harddisk=/nowhere/missing.img
}
menuentry 'Plain GRUB entry' {
    linux /vmlinuz
}
";

fn finish(q: &mut Qemu, expect: &str) {
    q.expect(expect, T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

#[test]
fn arrow_down_and_enter_boot_the_second_entry() {
    let dir = TempDir::new("menu-arrows");
    let host = menu_host(&dir, THREE_ENTRIES);
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("Plain GRUB entry", T);
    assert!(out.contains("First guest") && out.contains("Second guest"), "{}", out);
    q.send(b"\x1b[B");
    std::thread::sleep(Duration::from_millis(300));
    q.send(b"\r");
    let out = q.expect("GUEST-TWO", T);
    assert!(out.contains("Booting 'Second guest'"), "{}", out);
    assert!(out.contains("insmod"), "the skipped insmod should be mentioned:\n{}", out);
    assert!(!out.contains("GUEST-ONE"), "{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
}

#[test]
fn digit_key_boots_that_entry() {
    let dir = TempDir::new("menu-digit");
    let host = menu_host(&dir, THREE_ENTRIES);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("Plain GRUB entry", T);
    q.send(b"1");
    finish(&mut q, "GUEST-ONE");
}

#[test]
fn timeout_boots_the_default_by_id() {
    let dir = TempDir::new("menu-timeout");
    let cfg = THREE_ENTRIES.replace("set timeout=-1", "set timeout=2\nset default=second");
    let host = menu_host(&dir, &cfg);
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("GUEST-TWO", T);
    assert!(out.contains("Booting 'Second guest' in"), "the countdown was not shown:\n{}", out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
}

#[test]
fn timeout_zero_boots_at_once() {
    let dir = TempDir::new("menu-timeout0");
    let cfg = THREE_ENTRIES.replace("set timeout=-1", "set timeout=0\nset default=0");
    let host = menu_host(&dir, &cfg);
    let mut q = Qemu::boot_disk(&host.disk);
    finish(&mut q, "GUEST-ONE");
}

/// The end of a menu frame with no countdown: the help line, then an empty last line where
/// "Booting '...' in N s." was. The state drawn is the state the timer reads, so once this frame
/// comes the timeout can no longer boot anything.
const NO_COUNTDOWN: &str = "1-9: boot number\n\n";

#[test]
fn any_key_stops_the_countdown() {
    let dir = TempDir::new("menu-stop");
    // Long enough that the key comes before the end even on a loaded machine; the test does not
    // wait for it.
    let cfg = THREE_ENTRIES.replace("set timeout=-1", "set timeout=10");
    let host = menu_host(&dir, &cfg);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("in 10 s", T);
    assert!(!q.output().contains(NO_COUNTDOWN), "{}", q.output());
    let mark = q.mark();
    q.send(b"x");
    q.expect_from(mark, NO_COUNTDOWN, T);
    q.send(b"\r");
    finish(&mut q, "GUEST-ONE");
}

#[test]
fn e_shows_the_entry_and_escape_returns() {
    let dir = TempDir::new("menu-e");
    let host = menu_host(&dir, THREE_ENTRIES);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("Plain GRUB entry", T);
    q.send(b"\x1b[B");
    std::thread::sleep(Duration::from_millis(300));
    let mark = q.mark();
    q.send(b"e");
    let view = q.expect_from(mark, "vboot harddisk=(hd0,1)/two.img", T);
    assert!(view.contains("insmod part_msdos"), "{}", view);
    let mark = q.mark();
    q.send(b"\x1b");
    q.expect_from(mark, "Plain GRUB entry", T);
    q.send(b"1");
    finish(&mut q, "GUEST-ONE");
}

#[test]
fn errors_are_shown_and_lead_back_to_the_menu() {
    let dir = TempDir::new("menu-errors");
    let host = menu_host(&dir, THREE_ENTRIES);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("Plain GRUB entry", T);
    let mark = q.mark();
    q.send(b"3");
    let out = q.expect_from(mark, "Press any key to return to the menu.", T);
    assert!(out.contains("hard disk image /nowhere/missing.img not found on (hd0,1)"), "{}", out);
    let mark = q.mark();
    q.send(b" ");
    q.expect_from(mark, "Plain GRUB entry", T);
    let mark = q.mark();
    q.send(b"4");
    let out = q.expect_from(mark, "Press any key to return to the menu.", T);
    assert!(out.contains("has no vboot line, so there is nothing to boot"), "{}", out);
    let mark = q.mark();
    q.send(b" ");
    q.expect_from(mark, "Plain GRUB entry", T);
    q.send(b"2");
    finish(&mut q, "GUEST-TWO");
}

#[test]
fn a_malformed_grub_cfg_gets_an_error_screen() {
    let dir = TempDir::new("menu-malformed");
    let host = menu_host(&dir, "set timeout=5\nmenuentry 'Broken {\n  vboot harddisk=/one.img\n}\n");
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("Press any key to try again.", T);
    assert!(out.contains("grub.cfg line 2: unterminated single quote"), "{}", out);
}

#[test]
fn bad_vboot_options_are_refused_with_the_word() {
    let dir = TempDir::new("menu-badopt");
    let host = menu_host(&dir, "set timeout=0\nmenuentry 'Typo' {\n  vboot hardisk=/one.img pause\n}\n");
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("Press any key to return to the menu.", T);
    assert!(out.contains("`hardisk=/one.img`") && out.contains("did you mean `harddisk=`?"), "{}", out);
}
