use std::time::{Duration, Instant};
use vboot_tests::qemu::Qemu;
use vboot_tests::{guests, vboot_host, HostImage, TempDir};
fn timeline(reserve: &str) {
    let dir = TempDir::new("probe-slack");
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let vhd = dir.join("slack.vhd");
    vboot_tests::sh(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd).arg("1G"));
    vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 1M", hello.display())]);
    let host = vboot_host(&dir, 400, &format!("set timeout=0\nmenuentry 'hello' {{\n vboot harddisk=/slack.vhd {}\n}}\n", reserve), &[HostImage { path: "/slack.vhd", file: &vhd, pieces: 1 }]);
    let s = Instant::now();
    let mut q = Qemu::boot_disk(&host.disk);
    let mut seen = 0;
    loop {
        let out = q.output();
        let lines: Vec<&str> = out.lines().collect();
        while seen < lines.len() { eprintln!("{:7.3} {}", s.elapsed().as_secs_f64(), lines[seen]); seen += 1; }
        if out.contains("GUEST-HELLO") || s.elapsed() > Duration::from_secs(60) { break; }
        std::thread::sleep(Duration::from_millis(2));
    }
}
#[test]
#[ignore]
fn probe_timeline() { timeline(""); eprintln!("----"); timeline("reserve=0"); }
