//! Out of memory is never a halt (issue 13), driven as a user sees it: with the fault-injection
//! firmware (`cargo xtask build-faults`, which `fault_stage_dir` runs), which fails on purpose
//! where the release firmware never would (stage2/src/fault.rs, stage2/engine/src/fault.rs).
//!
//! - stage2: an allocation failure while booting an entry is reported (serial and screen) and the
//!   menu comes back, with a fresh heap: another entry then boots. After the resident hook is
//!   in, and for a panic while a panic is reported, it stops with the message instead.
//! - The engine: an allocation failure inside an INT 13h call fails that call with AH=20h and
//!   CF=1, says so on serial and on the screen, and the guest's next call works; one in
//!   `engine_init` becomes stage2's error message and the menu comes back; a panic while one is
//!   reported stops the machine with the message.

use std::time::Duration;
use vboot_tests::guests;
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{fault_stage_dir, vboot_host_from, HostImage, TempDir};

const T: Duration = Duration::from_secs(60);

/// A host disk made with the fault-injection firmware, holding `images` at the root.
fn fault_host(dir: &TempDir, cfg: &str, images: &[(&str, &std::path::Path)]) -> vboot_tests::Host {
    let images: Vec<HostImage> = images.iter().map(|(path, file)| HostImage { path, file, pieces: 1 }).collect();
    vboot_host_from(&fault_stage_dir(), dir, 64, cfg, &images)
}

fn menu(entries: &[(&str, &str)]) -> String {
    let mut s = String::from("set timeout=-1\n");
    for (title, body) in entries {
        s.push_str(&format!("menuentry '{}' {{\n{}\n}}\n", title, body));
    }
    s
}

/// The text screen with lines that wrapped at the right edge joined again.
fn screen(q: &Qemu) -> String {
    let mut text = String::new();
    for row in q.screen_text() {
        text.push_str(&row);
        if row.len() < 80 {
            text.push('\n');
        }
    }
    text
}

#[test]
fn stage2_out_of_memory_returns_to_the_menu_and_another_entry_boots() {
    let dir = TempDir::new("faults-stage2-oom");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[
        ("Exhaust the heap", "    vboot_fault stage2-oom\n    vboot harddisk=/one.img"),
        ("Guest one", "    vboot harddisk=/one.img"),
    ]);
    let host = fault_host(&dir, &cfg, &[("/one.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("2. Guest one", T);
    // Twice: the second time proves the first recovery left nothing behind (heap, panic count).
    for round in 0..2 {
        let mark = q.mark();
        q.send(b"1");
        let out = q.expect_from(mark, "Press any key to return to the menu.", T);
        assert!(out.contains("vboot: internal error: memory allocation of 1048576 bytes failed"), "round {}:\n{}", round, out);
        assert!(out.contains("vboot: the menu entry was abandoned"), "round {}:\n{}", round, out);
        assert!(!out.contains("Press any key to reboot"), "round {}:\n{}", round, out);
        // The same on the screen.
        let shown = screen(&q);
        assert!(shown.contains("vboot: internal error: memory allocation of 1048576 bytes failed\n"), "{}", shown);
        assert!(shown.contains("Press any key to return to the menu."), "{}", shown);
        let mark = q.mark();
        q.send(b" ");
        q.expect_from(mark, "2. Guest one", T);
    }
    // The menu works, and booting needs the heap that the failed entry had filled.
    let mark = q.mark();
    q.send(b"2");
    q.expect_from(mark, "GUEST-ONE", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

#[test]
fn stage2_panic_after_the_hook_is_in_stops_with_the_message() {
    let dir = TempDir::new("faults-stage2-hooked");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[("Fail after the hook", "    vboot_fault stage2-oom-after-hook\n    vboot harddisk=/one.img")]);
    let host = fault_host(&dir, &cfg, &[("/one.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("1. Fail after the hook", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "Press any key to reboot.", T);
    assert!(out.contains("Resident: stub"), "the fault came before the hook:\n{}", out);
    assert!(out.contains("vboot: internal error: memory allocation of 1048576 bytes failed"), "{}", out);
    assert!(out.contains("the image's INT 13h hook is already installed, so going back to the menu is not safe"), "{}", out);
    assert!(!out.contains("return to the menu") && !out.contains("GUEST-ONE"), "{}", out);
    // A key reboots (QEMU runs with -no-reboot, so it exits).
    q.send(b" ");
    assert_eq!(q.wait_exit(T), Some(0), "{}", q.output());
}

#[test]
fn stage2_panic_while_reporting_a_panic_stops_with_both_messages() {
    let dir = TempDir::new("faults-stage2-double");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[("Double panic", "    vboot_fault stage2-double-panic\n    vboot harddisk=/one.img")]);
    let host = fault_host(&dir, &cfg, &[("/one.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("1. Double panic", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "Press any key to reboot.", T);
    assert!(out.contains("vboot: internal error: injected fault: stage2-double-panic"), "{}", out);
    assert!(
        out.contains("vboot: internal error while handling an internal error: injected fault: a panic while reporting a panic"),
        "{}",
        out
    );
    assert!(!out.contains("return to the menu"), "{}", out);
}

#[test]
fn engine_out_of_memory_fails_that_call_and_the_next_one_works() {
    let dir = TempDir::new("faults-engine-oom");
    let guest = guests::faulter_guest(&dir.path, "faulter", 0xF0, 2, 2048);
    let cfg = "set timeout=0\nmenuentry 'Faulter' {\n    vboot harddisk=/faulter.img\n}\n";
    let host = fault_host(&dir, cfg, &[("/faulter.img", &guest)]);
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("FAULTER DONE", T);
    let out = &out[out.find("FAULTER start").expect("the guest started")..];
    let line = "vboot engine: internal error: memory allocation of 1879048192 bytes failed (src/alloc.rs:";
    assert_eq!(out.matches(line).count(), 2, "{}", out);
    assert_eq!(out.matches("; the disk request failed").count(), 2, "{}", out);
    // In order: the engine's line, then the guest's view of that call, then its next call.
    let mut at = 0;
    for (round, needle) in [(1, line), (1, "FAULT-CALL 1: CF=1 AH=20"), (1, "NEXT-CALL 1: OK"), (2, line), (2, "FAULT-CALL 2: CF=1 AH=20"), (2, "NEXT-CALL 2: OK")] {
        let found = out[at..].find(needle).unwrap_or_else(|| panic!("round {}: no {:?} after the previous step:\n{}", round, needle, out));
        at += found + needle.len();
    }
    // And on the screen, where the BIOS cursor was.
    let shown = screen(&q);
    assert_eq!(shown.matches(line).count(), 2, "{}", shown);
    assert_eq!(shown.matches("; the disk request failed\n").count(), 2, "{}", shown);
    q.send(b"x");
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

#[test]
fn engine_panic_while_reporting_a_panic_stops_the_machine_with_the_message() {
    let dir = TempDir::new("faults-engine-double");
    let guest = guests::faulter_guest(&dir.path, "faulter", 0xF1, 1, 2048);
    let cfg = "set timeout=0\nmenuentry 'Faulter' {\n    vboot harddisk=/faulter.img\n}\n";
    let host = fault_host(&dir, cfg, &[("/faulter.img", &guest)]);
    let mut q = Qemu::boot_disk(&host.disk);
    let first = "vboot engine: internal error: injected fault: INT 13h AH=F1h (src/fault.rs:";
    let second = "vboot engine: internal error: injected fault: a panic while reporting a panic (src/fault.rs:";
    let out = q.expect(second, T);
    let out = q.expect_from(out.find(second).unwrap(), "so the machine is stopped", T);
    assert!(out.contains("; while handling another one, so the machine is stopped"), "{}", out);
    assert!(q.output().contains(first), "{}", q.output());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!q.output().contains("FAULT-CALL") && q.try_exit().is_none(), "the guest went on:\n{}", q.output());
    let shown = screen(&q);
    assert!(shown.contains(first) && shown.contains(second), "{}", shown);
    assert!(shown.contains("; while handling another one, so the machine is stopped\n"), "{}", shown);
}

#[test]
fn engine_init_out_of_memory_is_an_error_and_the_menu_comes_back() {
    let dir = TempDir::new("faults-engine-init");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[
        ("Engine init fails", "    vboot harddisk=/engine-init-oom.img"),
        ("Guest one", "    vboot harddisk=/one.img"),
    ]);
    let host = fault_host(&dir, &cfg, &[("/engine-init-oom.img", &one), ("/one.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("2. Guest one", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "Press any key to return to the menu.", T);
    assert!(
        out.contains("vboot: engine: internal error: memory allocation of 1879048192 bytes failed (src/alloc.rs:"),
        "{}",
        out
    );
    assert!(out.contains("; the drives could not be set up"), "{}", out);
    assert!(!out.contains("Resident: stub"), "{}", out);
    let mark = q.mark();
    q.send(b" ");
    q.expect_from(mark, "2. Guest one", T);
    let mark = q.mark();
    q.send(b"2");
    q.expect_from(mark, "GUEST-ONE", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
}

// ---- CPU exceptions --------------------------------------------------------------------------

/// The first `0x...` number after `label` in `text`.
fn hex_after(text: &str, label: &str) -> u32 {
    let at = text.find(label).unwrap_or_else(|| panic!("no {:?} in:\n{}", label, text)) + label.len();
    let digits: String = text[at..].trim_start().trim_start_matches("0x").chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u32::from_str_radix(&digits, 16).unwrap_or_else(|_| panic!("no number after {:?} in:\n{}", label, text))
}

/// The bytes at physical address `at`, read by the QEMU monitor (`xp`), not by vboot.
fn bytes_at(q: &Qemu, at: u32, count: usize) -> Vec<u8> {
    let dump = q.monitor(&format!("xp /{}xb {:#x}", count, at));
    dump.lines()
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(_, cells)| cells.split_whitespace().map(|c| u8::from_str_radix(c.trim_start_matches("0x"), 16).unwrap()).collect::<Vec<_>>())
        .collect()
}

/// stage2 CPU exceptions (`vboot_fault stage2-ud2`, `stage2-divide-error`, `stage2-gp`): the
/// exception screen names the vector, the error code and the EIP, on COM1 and on the screen;
/// the instruction at that EIP (read by QEMU, not vboot) is the one that faulted; the machine
/// then waits for a key (still running: a triple fault would have ended QEMU, which runs with
/// -no-reboot), and the key restarts it (QEMU exits with 0).
#[test]
fn stage2_cpu_exceptions_show_the_vector_and_address_and_wait_for_a_key() {
    let dir = TempDir::new("faults-stage2-exception");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    // (fault kind, vector, error code, the faulting instruction's bytes)
    let kinds: [(&str, u32, u32, &[u8]); 3] = [
        ("stage2-ud2", 6, 0, &[0x0F, 0x0B]),
        ("stage2-divide-error", 0, 0, &[0xF7, 0xF1]),
        ("stage2-gp", 13, 0xFFF8, &[0x66, 0x8E, 0xD8]),
    ];
    for (kind, vector, error_code, instruction) in kinds {
        let cfg = menu(&[(kind, &format!("    vboot_fault {}\n    vboot harddisk=/one.img", kind))]);
        let host = fault_host(&dir, &cfg, &[("/one.img", &one)]);
        let mut q = Qemu::boot_disk(&host.disk);
        q.expect(&format!("1. {}", kind), T);
        let mark = q.mark();
        q.send(b"1");
        let out = q.expect_from(mark, "Press any key to reboot.", T);
        let line = format!("vboot: CPU exception {} (error code {:#x}) at EIP 0x", vector, error_code);
        assert!(out.contains(&line), "{}: no {:?}:\n{}", kind, line, out);
        assert!(out.contains("this is a bug in vboot; please report the line above"), "{}", out);
        let eip = hex_after(&out, "at EIP");
        assert_eq!(bytes_at(&q, eip, instruction.len()), instruction, "{}: EIP {:#x} is not the faulting instruction", kind, eip);
        let shown = screen(&q);
        assert!(shown.contains(&format!("{}{:08x}", line, eip)), "{}: not on the screen:\n{}", kind, shown);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(q.try_exit(), None, "{}: QEMU ended before a key was pressed (a triple fault?):\n{}", kind, q.output());
        q.send(b" ");
        assert_eq!(q.wait_exit(T), Some(0), "{}: the key did not restart the machine:\n{}", kind, q.output());
    }
}

/// Engine CPU exceptions during a guest's INT 13h call (the fault guest's AH=F2h: `ud2`;
/// AH=F3h: a general-protection fault with error code FFF8h): the engine's own IDT catches it
/// (without it, the guest's real-mode IDTR would turn it into a triple fault), the line names the
/// vector, error code, EIP and the engine's base, on COM1 and on the screen, and the processor
/// stops: QEMU keeps running with its CPU halted, and the guest never sees the call return.
#[test]
fn engine_cpu_exceptions_are_reported_and_the_machine_halts() {
    let dir = TempDir::new("faults-engine-exception");
    for (ah, vector, error_code, instruction) in [(0xF2u8, 6u32, 0u32, &[0x0Fu8, 0x0B][..]), (0xF3, 13, 0xFFF8, &[0x66, 0x8E, 0xD8][..])] {
        let guest = guests::faulter_guest(&dir.path, &format!("faulter-{:x}", ah), ah, 1, 2048);
        let cfg = "set timeout=0\nmenuentry 'Faulter' {\n    vboot harddisk=/faulter.img\n}\n";
        let host = fault_host(&dir, cfg, &[("/faulter.img", &guest)]);
        let mut q = Qemu::boot_disk(&host.disk);
        let out = q.expect("; the machine is stopped", T);
        let line = format!("vboot engine: CPU exception {} (error code {:#x}) at EIP 0x", vector, error_code);
        assert!(out.contains(&line), "AH={:02X}h: no {:?}:\n{}", ah, line, out);
        // Where stage2 put the engine: "Resident: stub ..., engine N KiB at 0x...".
        let resident = &out[out.find("Resident: stub").expect("the hook went in")..];
        let region = hex_after(&resident[resident.find(", engine ").unwrap()..], "KiB at");
        let eip = hex_after(&out, &line[..line.len() - 2]);
        let base = hex_after(&out, "(engine at");
        let offset = hex_after(&out, &format!("(engine at {:#x} +", base));
        assert_eq!(base, region, "the engine's base is not where stage2 put it:\n{}", out);
        assert_eq!(base + offset, eip, "{}", out);
        assert_eq!(bytes_at(&q, eip, instruction.len()), instruction, "AH={:02X}h: EIP {:#x} is not the faulting instruction", ah, eip);
        let shown = screen(&q);
        assert!(shown.contains(&format!("{}{:08x}", line, eip)), "AH={:02X}h: not on the screen:\n{}", ah, shown);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(q.try_exit(), None, "AH={:02X}h: QEMU ended (a triple fault?):\n{}", ah, q.output());
        let cpu = q.monitor("info registers");
        // Halted with interrupts off: stopped for good (cli; hlt), not waiting for a tick.
        assert!(cpu.contains("HLT=1") && hex_after(&cpu, "EFL=") & 0x200 == 0, "AH={:02X}h: the CPU is not stopped:\n{}", ah, cpu);
        assert!(!q.output().contains("FAULT-CALL"), "the guest went on:\n{}", q.output());
    }
}

/// After the hook went in (`engine_init` ran and went through the BIOS, whose real-mode half
/// loads the real-mode IDTR), stage2's own IDT is back: a CPU exception there still gets stage2's
/// exception screen, not a triple fault.
#[test]
fn stage2_cpu_exception_after_the_hook_still_gets_its_screen() {
    let dir = TempDir::new("faults-stage2-exception-hooked");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[("ud2 after the hook", "    vboot_fault stage2-ud2-after-hook\n    vboot harddisk=/one.img")]);
    let host = fault_host(&dir, &cfg, &[("/one.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("1. ud2 after the hook", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "Press any key to reboot.", T);
    let resident = out.find("Resident: stub").expect("the fault came before the hook");
    let line = out.find("vboot: CPU exception 6 (error code 0x0) at EIP 0x").unwrap_or_else(|| panic!("no exception line:\n{}", out));
    assert!(resident < line, "{}", out);
    assert!(!out.contains("vboot engine:") && !out.contains("GUEST-ONE"), "{}", out);
    let eip = hex_after(&out, "at EIP");
    assert_eq!(bytes_at(&q, eip, 2), [0x0F, 0x0B], "EIP {:#x} is not the ud2", eip);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(q.try_exit(), None, "QEMU ended before a key was pressed (a triple fault?):\n{}", q.output());
}

/// A CPU exception inside `engine_init` (called by stage2 with stage2's IDT loaded) is caught by
/// the engine's IDT: its line, then the machine halts.
#[test]
fn engine_cpu_exception_during_init_is_reported_and_halts() {
    let dir = TempDir::new("faults-engine-init-exception");
    let one = guests::hello_guest(&dir.path, "one", "GUEST-ONE", 2048);
    let cfg = menu(&[("Engine init ud2", "    vboot harddisk=/engine-init-ud2.img")]);
    let host = fault_host(&dir, &cfg, &[("/engine-init-ud2.img", &one)]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("1. Engine init ud2", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "; the machine is stopped", T);
    assert!(out.contains("vboot engine: CPU exception 6 (error code 0x0) at EIP 0x"), "{}", out);
    let eip = hex_after(&out, "vboot engine: CPU exception 6 (error code 0x0) at EIP");
    assert_eq!(bytes_at(&q, eip, 2), [0x0F, 0x0B], "EIP {:#x} is not the ud2", eip);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(q.try_exit(), None, "QEMU ended (a triple fault?):\n{}", q.output());
    let cpu = q.monitor("info registers");
    assert!(cpu.contains("HLT=1") && hex_after(&cpu, "EFL=") & 0x200 == 0, "the CPU is not stopped:\n{}", cpu);
}
