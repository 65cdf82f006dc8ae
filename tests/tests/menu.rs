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

/// A boot of the three entries, once the menu is on screen. The directory holds the disk QEMU
/// runs on.
fn menu_is_up(tag: &str) -> (TempDir, Qemu) {
    let (dir, mut q) = booting(tag, THREE_ENTRIES);
    q.expect("Plain GRUB entry", T);
    (dir, q)
}

/// The two guests' host disk with `cfg` as grub.cfg, booting. The directory holds the disk.
fn booting(tag: &str, cfg: &str) -> (TempDir, Qemu) {
    let dir = TempDir::new(tag);
    let host = menu_host(&dir, cfg);
    let q = Qemu::boot_disk(&host.disk);
    (dir, q)
}

/// While the countdown runs: a key stops it (the next screen has no countdown line), and the
/// second entry, chosen then, boots.
fn stop_the_countdown_and_boot_the_second_entry(q: &mut Qemu) {
    press(q, b"x", NO_COUNTDOWN);
    q.send(b"2");
    finish(q, "GUEST-TWO");
}

/// A boot of the three entries, at the menu with the second entry highlighted (the key given
/// time to be handled). The directory holds the disk QEMU runs on.
fn menu_at_the_second_entry(tag: &str) -> (TempDir, Qemu) {
    let (dir, mut q) = menu_is_up(tag);
    q.send(b"\x1b[B");
    std::thread::sleep(Duration::from_millis(300));
    (dir, q)
}

#[test]
fn e_shows_the_entry_and_escape_returns() {
    let (_dir, mut q) = menu_at_the_second_entry("menu-e");
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

/// The editor's title line, once the editor is on screen for `title`.
fn editing(title: &str) -> String {
    format!("Editing '{}' for this boot only", title)
}

const PAUSE_PROMPT: &str = "Paused before starting the guest. Press any key to boot.";

/// Type `keys` and wait for `expect` to come after them; returns what came.
fn press(q: &mut Qemu, keys: &[u8], expect: &str) -> String {
    let mark = q.mark();
    q.send(keys);
    q.expect_from(mark, expect, T)
}

/// A boot of the three entries with the first one being edited: `e`, End, and ` pause` typed
/// at the end of its vboot line. Keeps the host disk's bytes from before the boot.
struct EditSession {
    dir: TempDir,
    host: vboot_tests::Host,
    disk_before: Vec<u8>,
    q: Qemu,
}

impl EditSession {
    fn start(tag: &str) -> EditSession {
        let dir = TempDir::new(tag);
        let host = menu_host(&dir, THREE_ENTRIES);
        let disk_before = std::fs::read(&host.disk).unwrap();
        let mut q = Qemu::boot_disk(&host.disk);
        q.expect("Plain GRUB entry", T);
        press(&mut q, b"e", &editing("First guest"));
        // End as a terminal sends it, then the option.
        press(&mut q, b"\x1b[F pause", "vboot harddisk=/one.img pause");
        EditSession { dir, host, disk_before, q }
    }

    /// The edit was for this boot only: grub.cfg, and the whole host disk, as before the boot.
    fn assert_host_unchanged(&self) {
        let part = self.host.current_partition(&self.dir.join("part-after.img"));
        vboot_tests::disk::fat_get(&part, "/boot/grub/grub.cfg", &self.dir.join("grub.cfg"));
        assert_eq!(std::fs::read_to_string(self.dir.join("grub.cfg")).unwrap(), THREE_ENTRIES);
        assert!(std::fs::read(&self.host.disk).unwrap() == self.disk_before, "the host disk changed");
    }
}

#[test]
fn e_edits_the_entry_and_ctrl_x_boots_the_edit() {
    let mut s = EditSession::start("menu-edit");
    // Enter at the end of the line adds one, read as the file's other commands are.
    press(&mut s.q, b"\rinsmod extra", "pause\ninsmod extra\n");
    let out = press(&mut s.q, b"\x18", PAUSE_PROMPT);
    assert!(out.contains("Booting 'First guest' (edited at the menu)"), "{}", out);
    assert!(out.contains("edited line 2: `insmod` skipped: vboot runs only the vboot line"), "{}", out);
    assert!(!out.contains("GUEST-ONE"), "the guest started before the pause:\n{}", out);
    s.q.send(b" ");
    finish(&mut s.q, "GUEST-ONE");
    s.assert_host_unchanged();
}

#[test]
fn escape_in_the_editor_discards_the_edit() {
    let mut s = EditSession::start("menu-edit-esc");
    press(&mut s.q, b"\x1b", "Plain GRUB entry");
    // A new edit starts from grub.cfg's line, without the discarded option.
    let view = press(&mut s.q, b"e", "Arrows, Home, End: move");
    assert!(view.contains("vboot harddisk=/one.img\n") && !view.contains("pause"), "{}", view);
    press(&mut s.q, b"\x1b", "Plain GRUB entry");
    let mark = s.q.mark();
    s.q.send(b"1");
    finish(&mut s.q, "GUEST-ONE");
    assert!(!s.q.output()[mark..].contains(PAUSE_PROMPT), "{}", s.q.output());
    s.assert_host_unchanged();
}

#[test]
fn an_edited_line_with_an_unknown_option_is_refused() {
    let (_dir, mut q) = menu_at_the_second_entry("menu-edit-bad");
    let misspell = |q: &mut Qemu| {
        press(q, b"e", &editing("Second guest"));
        // Down to the vboot line, End, a misspelt option, Ctrl-X: the parser's refusal.
        press(q, b"\x1b[B\x1b[F pauze", "vboot harddisk=(hd0,1)/two.img pauze");
        let out = press(q, b"\x18", "Any other key: back to the editor");
        let refusal = "edited line 2: unknown vboot option `pauze` (did you mean `pause`?)";
        assert!(out.contains(refusal), "the parser's refusal was not shown:\n{}", out);
    };
    // Esc from the refusal: the menu, and the edit is gone.
    misspell(&mut q);
    press(&mut q, b"\x1b", "Plain GRUB entry");
    // Another key: the editor with the edit kept, to be corrected (Backspace twice, as a
    // terminal sends it) and booted with F10.
    misspell(&mut q);
    let view = press(&mut q, b"\r", "Arrows, Home, End: move");
    assert!(view.contains(&editing("Second guest")) && view.contains("two.img pauze\n"), "{}", view);
    press(&mut q, b"\x7f\x7fse", "two.img pause\n");
    press(&mut q, b"\x1b[21~", PAUSE_PROMPT);
    q.send(b" ");
    finish(&mut q, "GUEST-TWO");
}

#[test]
fn the_countdown_updates_its_own_line_on_the_serial_console() {
    let long = "First guest, with a title long enough that its countdown line would not fit";
    let cfg = THREE_ENTRIES.replace("set timeout=-1", "set timeout=30").replace("'First guest'", &format!("'{}'", long));
    let (_dir, mut q) = booting("menu-countdown", &cfg);
    q.expect("in 28 s", T);
    let raw = q.raw_output();
    // One full screen, then each second only the countdown row, rewritten after a CR.
    assert_eq!(raw.matches("\x1b[2J").count(), 1, "{:?}", raw);
    assert_eq!(raw.matches("vboot\r\n").count(), 1, "{:?}", raw);
    let shortened = "Booting 'First guest, with a title long enou...'";
    for secs in [29, 28] {
        let update = format!("\r{} in {} s. Press any key to stop.\x1b[K", shortened, secs);
        assert!(raw.contains(&update), "no update {:?} in place:\n{:?}", update, raw);
    }
    // No row of the screen is wider than 80 columns, on the serial console or the VGA screen.
    let screen = &raw[raw.find("\x1b[2J").unwrap()..];
    for row in screen.split("\r\n").flat_map(|l| l.split('\r')) {
        let text = vboot_tests::qemu::strip_ansi(row);
        assert!(text.chars().count() <= 80, "a row of {} columns: {:?}", text.chars().count(), text);
    }
    let vga = q.screen_text();
    assert!(vga[24].starts_with(shortened) && vga[24].ends_with(" s. Press any key to stop."), "{:?}", vga);
    assert_eq!(vga[0], "vboot");
    stop_the_countdown_and_boot_the_second_entry(&mut q);
}

#[test]
fn timeout_style_countdown_shows_only_its_line_until_a_key() {
    let cfg = THREE_ENTRIES.replace("set timeout=-1", "set timeout=30\nset timeout_style=countdown");
    let (_dir, mut q) = booting("menu-countdown-style", &cfg);
    q.expect("Booting 'First guest' in 29 s. Press any key for the menu.", T);
    assert!(!q.output().contains("Plain GRUB entry"), "the menu was shown:\n{}", q.output());
    assert!(q.raw_output().contains("\rBooting 'First guest' in 29 s."), "not updated in place:\n{:?}", q.raw_output());
    let vga = q.screen_text();
    assert!(vga[..24].iter().all(|l| l.is_empty()) && vga[24].starts_with("Booting 'First guest' in "), "{:?}", vga);
    // A key brings the menu up, without the countdown.
    stop_the_countdown_and_boot_the_second_entry(&mut q);
}

/// Keys typed on the PS/2 keyboard (QEMU's `sendkey`), one at a time, each given time to reach
/// the BIOS's keyboard buffer before the next.
fn keyboard(q: &Qemu, keys: &[&str]) {
    for key in keys {
        q.monitor(&format!("sendkey {}", key));
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn the_editor_works_on_the_keyboard() {
    let (_dir, mut q) = menu_is_up("menu-edit-kbd");
    let mark = q.mark();
    keyboard(&q, &["e"]);
    q.expect_from(mark, &editing("First guest"), T);
    // End, " pausex", Backspace, then Home and Delete (BIOS scan codes for the keys that have
    // no ASCII code), and the `v` typed back.
    let mark = q.mark();
    keyboard(&q, &["end", "spc", "p", "a", "u", "s", "e", "x", "backspace", "home", "delete"]);
    q.expect_from(mark, "\nboot harddisk=/one.img pause\n", T);
    let mark = q.mark();
    keyboard(&q, &["v"]);
    q.expect_from(mark, "\nvboot harddisk=/one.img pause\n", T);
    let mark = q.mark();
    keyboard(&q, &["f10"]);
    q.expect_from(mark, PAUSE_PROMPT, T);
    keyboard(&q, &["spc"]);
    finish(&mut q, "GUEST-ONE");
}
