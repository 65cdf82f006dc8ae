//! QEMU + SeaBIOS as the test machine. TCG by default (BIOS-heavy guests run far slower under
//! KVM); `VBOOT_QEMU_ACCEL=kvm` switches. Disks on virtio-blk. Every run has a timeout; the
//! guest talks over COM1 (our stdin/stdout) and may end QEMU through isa-debug-exit, where
//! exit status 0 (a triple fault under -no-reboot) is never success.

use crate::require_tool;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SEABIOS: &str = "/usr/share/seabios/bios.bin";
/// What a guest writes to port 0xF4 to say "pass": QEMU exits with (0x10 << 1) | 1.
pub const EXIT_PASS: i32 = 33;
pub const EXIT_FAIL: i32 = 35;

#[derive(Clone)]
pub struct Drive {
    pub path: PathBuf,
    /// QEMU `if=`: virtio, ide, floppy.
    pub interface: &'static str,
    pub media_cdrom: bool,
}

impl Drive {
    pub fn virtio(path: &Path) -> Drive {
        Drive { path: path.to_path_buf(), interface: "virtio", media_cdrom: false }
    }
}

pub struct Config {
    pub drives: Vec<Drive>,
    pub memory_mib: u32,
    pub extra: Vec<String>,
    /// Mirror BIOS INT 10h text output to COM1 (SeaBIOS "sercon"), with no VGA card: for
    /// messages printed through the BIOS, such as stage1's errors or a guest's own output.
    pub sercon: bool,
    /// Run qemu-system-x86_64 (a 64-bit guest kernel) instead of qemu-system-i386.
    pub x86_64: bool,
}

impl Config {
    pub fn disk(path: &Path) -> Config {
        Config { drives: vec![Drive::virtio(path)], memory_mib: 128, extra: vec![], sercon: false, x86_64: false }
    }
}

pub struct Qemu {
    child: Child,
    monitor: PathBuf,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

fn accel() -> String {
    std::env::var("VBOOT_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into())
}

impl Qemu {
    pub fn boot_disk(path: &Path) -> Qemu {
        Qemu::start(&Config::disk(path))
    }

    pub fn start(cfg: &Config) -> Qemu {
        let program = if cfg.x86_64 { "qemu-system-x86_64" } else { "qemu-system-i386" };
        require_tool(program, "qemu-system-x86");
        assert!(Path::new(SEABIOS).exists(), "{} is missing: install the Debian package seabios", SEABIOS);
        let mut cmd = Command::new(program);
        cmd.args(["-bios", SEABIOS, "-display", "none", "-nodefaults"]);
        if cfg.sercon {
            let port = std::env::temp_dir().join("vboot-sercon-port.bin");
            std::fs::write(&port, 0x3F8u16.to_le_bytes()).expect("write sercon port file");
            cmd.args(["-vga", "none", "-fw_cfg"]).arg(format!("name=etc/sercon-port,file={}", port.display()));
        } else {
            cmd.args(["-vga", "std"]);
        }
        cmd
            .args(["-serial", "stdio", "-no-reboot", "-m", &cfg.memory_mib.to_string()])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
            .args(["-accel", &accel()]);
        for d in &cfg.drives {
            let mut spec = format!("file={},format=raw,if={}", d.path.display(), d.interface);
            if d.media_cdrom {
                spec.push_str(",media=cdrom");
            }
            cmd.arg("-drive").arg(spec);
        }
        cmd.args(&cfg.extra);
        // Debugging aid: extra QEMU arguments for every run, e.g. "-d int,cpu_reset -D /tmp/q.log".
        if let Ok(extra) = std::env::var("VBOOT_QEMU_EXTRA") {
            cmd.args(extra.split_whitespace());
        }
        // A monitor socket, so a hung guest's CPU state can be shown when a test times out.
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let monitor = std::env::temp_dir().join(format!("vboot-qemu-{}-{}.mon", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_file(&monitor);
        cmd.arg("-monitor").arg(format!("unix:{},server,nowait", monitor.display()));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start qemu-system-i386");
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for pipe in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let out = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        let stdin = child.stdin.take();
        Qemu { child, monitor, stdin, output, readers, started: Instant::now() }
    }

    /// After QEMU exited: wait until everything it wrote has been read.
    fn drain(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Ask the QEMU monitor for the CPU registers (for the message of a test that timed out).
    pub fn cpu_state(&self) -> String {
        use std::os::unix::net::UnixStream;
        let Ok(mut sock) = UnixStream::connect(&self.monitor) else { return String::from("(no monitor)") };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = sock.write_all(b"info registers\nxp /32xb 0x7c00\nxp /8xh 0x7bf0\nxp /2xh 0x20\nxp /1xb 0x81a3\nxp /32xb 0x9f070\nxp /8xh 0x9f088\n");
        std::thread::sleep(Duration::from_millis(500));
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        strip_ansi(&String::from_utf8_lossy(&all))
    }

    /// Run one QEMU monitor command and return what it printed (the text between the command's
    /// echo and the next prompt).
    pub fn monitor(&self, command: &str) -> String {
        use std::os::unix::net::UnixStream;
        let mut sock = UnixStream::connect(&self.monitor).expect("connect to the QEMU monitor");
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Read until `prompts` prompts have come: the banner's (1), then the command's (2).
        fn read_to_prompt(sock: &mut UnixStream, all: &mut Vec<u8>, prompts: usize, deadline: Instant, command: &str) {
            let mut buf = vec![0u8; 65536];
            while strip_ansi(&String::from_utf8_lossy(all)).matches("(qemu)").count() < prompts {
                assert!(Instant::now() < deadline, "the QEMU monitor did not answer {:?}", command);
                if let Ok(n) = sock.read(&mut buf) {
                    all.extend_from_slice(&buf[..n]);
                }
            }
        }
        let mut all = Vec::new();
        read_to_prompt(&mut sock, &mut all, 1, deadline, command);
        sock.write_all(format!("{}\n", command).as_bytes()).expect("write to the QEMU monitor");
        read_to_prompt(&mut sock, &mut all, 2, deadline, command);
        let text = strip_ansi(&String::from_utf8_lossy(&all));
        let after = text.split_once(command).map(|(_, rest)| rest).unwrap_or(&text);
        after.rsplit_once("(qemu)").map(|(before, _)| before).unwrap_or(after).trim().to_string()
    }

    /// The text screen (80x25 at 0xB8000, page 0) as 25 lines, trailing blanks removed, read from
    /// guest memory through the monitor: what a user would see on the (VGA) screen.
    pub fn screen_text(&self) -> Vec<String> {
        let dump = self.monitor("xp /2000hx 0xb8000");
        let mut chars = Vec::with_capacity(2000);
        for line in dump.lines() {
            let Some((_, cells)) = line.split_once(':') else { continue };
            for cell in cells.split_whitespace() {
                if let Ok(v) = u16::from_str_radix(cell.trim_start_matches("0x"), 16) {
                    let c = (v & 0xFF) as u8;
                    chars.push(if (0x20..0x7F).contains(&c) { c as char } else { ' ' });
                }
            }
        }
        assert_eq!(chars.len(), 2000, "unexpected screen dump:\n{}", dump);
        chars.chunks(80).map(|row| row.iter().collect::<String>().trim_end().to_string()).collect()
    }

    /// Everything the guest printed so far, with ANSI escape sequences and CRs removed.
    pub fn output(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.output.lock().unwrap()))
    }

    /// Wait until the output contains `needle`. Panics with the whole output on timeout or exit.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                let out = self.output();
                if out.contains(needle) {
                    return out;
                }
                panic!("QEMU exited ({}) before printing {:?}; output:\n{}", status, needle, out);
            }
            if Instant::now() > deadline {
                panic!("timed out after {:?} waiting for {:?}; output:\n{}\nCPU:\n{}", timeout, needle, out, self.cpu_state());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where the output ends now: pass it to [`Qemu::expect_from`] to wait for text that comes
    /// after this point.
    pub fn mark(&self) -> usize {
        self.output().len()
    }

    /// Like [`Qemu::expect`], but only output after `mark` counts. Returns that output.
    pub fn expect_from(&mut self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            let tail = out.get(mark..).unwrap_or("");
            if tail.contains(needle) {
                return tail.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                let out = self.output();
                let tail = out.get(mark..).unwrap_or("").to_string();
                if tail.contains(needle) {
                    return tail;
                }
                panic!("QEMU exited ({}) before printing {:?}; output after the mark:\n{}", status, needle, tail);
            }
            if Instant::now() > deadline {
                panic!("timed out after {:?} waiting for {:?}; output after the mark:\n{}", timeout, needle, tail);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// At the menu (whose line `menu_line` is on screen), press each key of `cases` and check that
    /// the error screen it leads to says the message, then press a key to go back to the menu.
    pub fn expect_refusals(&mut self, menu_line: &str, cases: &[(&[u8], &str)], timeout: Duration) {
        for (key, message) in cases {
            let mark = self.mark();
            self.send(key);
            let out = self.expect_from(mark, "Press any key to return to the menu.", timeout);
            assert!(out.contains(message), "expected {:?}:\n{}", message, out);
            let mark = self.mark();
            self.send(b" ");
            self.expect_from(mark, menu_line, timeout);
        }
    }

    /// At the menu (whose line `menu_line` is on screen), press `key` and wait for the guest to
    /// end QEMU with the pass code after printing `needle`. Returns the output after the key.
    pub fn boot_from_menu(&mut self, menu_line: &str, key: u8, needle: &str, timeout: Duration) -> String {
        self.expect(menu_line, timeout);
        std::thread::sleep(Duration::from_millis(200));
        let mark = self.mark();
        self.send(&[key]);
        let status = self.wait_exit(timeout);
        let tail = self.output().get(mark..).unwrap_or("").to_string();
        assert!(tail.contains(needle), "key {:?}: no {:?} (exit {:?}):\n{}", key as char, needle, status, tail);
        assert_eq!(status, Some(EXIT_PASS), "{}", tail);
        tail
    }

    /// Type bytes on the serial line.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write to QEMU");
        stdin.flush().unwrap();
    }

    /// Wait for QEMU to exit; `None` on timeout (QEMU is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if QEMU has exited (all its output read), else `None` at once.
    pub fn try_exit(&mut self) -> Option<i32> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.drain();
                Some(status.code().unwrap_or(-1))
            }
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.monitor);
    }
}

/// Remove ANSI escape sequences (CSI and two-byte ESC forms) and carriage returns.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                Some(_) | None => {}
            },
            '\r' => {}
            _ => out.push(c),
        }
    }
    out
}
