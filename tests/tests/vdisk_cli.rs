//! The `vdisk` command line, checked against qemu-img/qemu-io (Debian qemu-utils) and the
//! distribution's python3 (JSON validation).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("vboot-vdisk-{}-{}-{}", tag, std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Build vdisk once (it is another package of the workspace) and return its path.
fn vdisk_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo).args(["build", "-q", "-p", "vdisk"]).current_dir(&root).status().expect("cannot run cargo to build vdisk");
        assert!(st.success(), "building vdisk failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        target.join("debug").join("vdisk")
    })
}

fn vdisk(args: &[&str]) -> Output {
    Command::new(vdisk_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = vdisk(args);
    assert!(o.status.success(), "vdisk {:?} failed: {}{}", args, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run vdisk expecting failure; returns stderr+stdout.
fn err(args: &[&str]) -> String {
    let o = vdisk(args);
    assert!(!o.status.success(), "vdisk {:?} should have failed: {}", args, String::from_utf8_lossy(&o.stdout));
    format!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout))
}

fn tool(cmd: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {} ({}): install the Debian package {}", cmd, e, package));
    assert!(out.status.success(), "{} {:?} failed: {}{}", cmd, args, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    tool("qemu-img", "qemu-utils", args)
}

fn qemu_io(fmt: &str, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    tool("qemu-io", "qemu-utils", &args);
}

fn json_field(json: &str, path: &str) -> String {
    let script = format!("import json,sys\nv=json.load(sys.stdin)\nfor k in {:?}.split('.'):\n    v=v[int(k)] if k.isdigit() else v[k]\nprint(v)", path);
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run /usr/bin/python3 (Debian python3)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "not valid JSON or no field {}: {}", path, json);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn create_every_variant_and_qemu_agrees() {
    let dir = TempDir::new("create");
    for (variant, fmt, check) in [
        ("raw", "raw", false),
        ("vhd-fixed", "vpc", false),
        ("vhd-dynamic", "vpc", false),
        ("vmdk-monolithicSparse", "vmdk", true),
        ("vmdk-monolithicFlat", "vmdk", true),
        ("vmdk-twoGbMaxExtentSparse", "vmdk", true),
        ("vmdk-twoGbMaxExtentFlat", "vmdk", true),
        ("vmdk-vmfs", "vmdk", true),
        ("vdi-dynamic", "vdi", true),
        ("vdi-fixed", "vdi", true),
    ] {
        let img = dir.path(&format!("{}.img", variant));
        ok(&["create", &img, "--format", variant, "--size", "100M", "--reserve", "1M"]);
        if check {
            qemu_img(&["check", "-f", fmt, &img]);
        }
        let info = qemu_img(&["info", "--output=json", "-f", fmt, &img]);
        let qemu_size: u64 = json_field(&info, "virtual-size").parse().unwrap();
        let ours = ok(&["info", "--json", &img]);
        let our_size: u64 = json_field(&ours, "virtual_size_bytes").parse().unwrap();
        assert_eq!(our_size, qemu_size, "{}", variant);
        // VHD default: rounded up to a CHS product like qemu does (100 MiB -> 104865792).
        if fmt == "vpc" {
            assert_eq!(our_size, 104_865_792, "{}", variant);
        } else {
            assert_eq!(our_size, 100 << 20, "{}", variant);
        }
        let c = ok(&["check", &img]);
        assert!(c.contains("no problems"), "{}", c);
    }
}

#[test]
fn snapshot_chain_map_and_info() {
    let dir = TempDir::new("chain");
    let base = dir.path("base.vmdk");
    ok(&["create", &base, "--size", "64M"]);
    qemu_io("vmdk", &base, &["write -P 0x11 0 1m"]);
    let child = dir.path("child.vmdk");
    let out = ok(&["snapshot", &base, &child, "--reserve", "1M"]);
    assert!(out.contains("chain depth 2"), "{}", out);
    // qemu follows our parent link and writes into our child.
    qemu_io("vmdk", &child, &["write -P 0x22 512k 64k"]);
    qemu_img(&["check", "-f", "vmdk", &child]);
    let map = ok(&["map", "--json", &child]);
    assert_eq!(json_field(&map, "0.layer"), "1", "{}", map);
    assert_eq!(json_field(&map, "0.start_sector"), "0");
    assert_eq!(json_field(&map, "1.layer"), "0", "{}", map);
    assert_eq!(json_field(&map, "1.start_sector"), "1024");
    assert_eq!(json_field(&map, "1.sectors"), "128");
    // The same placement as qemu-img map (depth 0 = the child holds the data).
    let qmap = qemu_img(&["map", "--output=json", "-f", "vmdk", &child]);
    assert!(qmap.contains("\"start\": 524288, \"length\": 65536, \"depth\": 0"), "{}", qmap);
    let info = ok(&["info", "--json", &child]);
    assert_eq!(json_field(&info, "chain_depth"), "2");
    assert_eq!(json_field(&info, "layers.0.differencing"), "True");
    let human = ok(&["info", &child]);
    assert!(human.contains("chain depth:    2") && human.contains("parent_cid"), "{}", human);
    // A snapshot of a VHD and a VDI too.
    for ext in ["vhd", "vdi"] {
        let b = dir.path(&format!("b.{}", ext));
        let c = dir.path(&format!("c.{}", ext));
        ok(&["create", &b, "--size", "32M"]);
        ok(&["snapshot", &b, &c]);
        let info = ok(&["info", "--json", &c]);
        assert_eq!(json_field(&info, "chain_depth"), "2", "{}", ext);
        assert_eq!(json_field(&info, "layers.0.variant"), "differencing", "{}", ext);
    }
}

#[test]
fn clear_errors_and_nothing_half_written() {
    let dir = TempDir::new("errors");
    let a = dir.path("a.vhd");
    ok(&["create", &a, "--size", "8M"]);
    let before = std::fs::read(&a).unwrap();
    let e = err(&["create", &a, "--size", "8M"]);
    assert!(e.contains("already exists"), "{}", e);
    assert_eq!(std::fs::read(&a).unwrap(), before);
    let e = err(&["create", &dir.path("b.vhd"), "--size", "12345"]);
    assert!(e.contains("multiple of 512"), "{}", e);
    let e = err(&["create", &dir.path("b.qcow"), "--size", "8M"]);
    assert!(e.contains("--format"), "{}", e);
    let e = err(&["create", &dir.path("b.img"), "--format", "qcow9", "--size", "8M"]);
    assert!(e.contains("unknown format") && e.contains("vhd-dynamic"), "{}", e);
    let e = err(&["create", &dir.path("b.vdi"), "--parent", &a]);
    assert!(e.contains("b.vdi") && e.contains("vhd"), "{}", e);
    let e = err(&["snapshot", &dir.path("missing.vhd"), &dir.path("c.vhd")]);
    assert!(e.contains("missing.vhd"), "{}", e);
    // A child whose parent vanished: the message names the child, the expected identity and
    // each place searched.
    let child = dir.path("child.vhd");
    ok(&["snapshot", &a, &child]);
    std::fs::remove_file(&a).unwrap();
    let e = err(&["info", &child]);
    assert!(e.contains("child.vhd") && e.contains("Unique Id") && e.contains("a.vhd: not found"), "{}", e);
    let o = vdisk(&["check", &child]);
    assert_eq!(o.status.code(), Some(1));
    // No temporary files left behind by any of the failures.
    let left: Vec<String> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, vec!["child.vhd".to_string()], "{:?}", left);
}

#[test]
fn convert_keeps_the_content() {
    let dir = TempDir::new("convert");
    let src = dir.path("src.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &src, "64M"]);
    qemu_io("vmdk", &src, &["write -P 0x5A 1m 300k", "write -P 0xA5 40m 4k"]);
    for (target, fmt, variant) in [("t.vhd", "vpc", None), ("t.vdi", "vdi", None), ("t2.vmdk", "vmdk", None), ("t.img", "raw", None), ("t3.vmdk", "vmdk", Some("vmdk-twoGbMaxExtentSparse")), ("t4.vmdk", "vmdk", Some("vmdk-monolithicFlat"))] {
        let t = dir.path(target);
        match variant {
            Some(v) => ok(&["convert", &src, &t, "--format", v]),
            None => ok(&["convert", &src, &t]),
        };
        let cmp = Command::new("qemu-img").args(["compare", "-f", "vmdk", "-F", fmt, &src, &t]).output().expect("qemu-img (Debian qemu-utils)");
        assert!(cmp.status.success(), "{}: {}{}", target, String::from_utf8_lossy(&cmp.stdout), String::from_utf8_lossy(&cmp.stderr));
    }
    let left: Vec<String> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "temporary files left: {:?}", left);
}

#[test]
fn reserve_and_trim_slack() {
    let dir = TempDir::new("slack");
    for (name, fmt) in [("r.vhd", "vpc"), ("r.vdi", "vdi"), ("r.vmdk", "vmdk")] {
        let img = dir.path(name);
        ok(&["create", &img, "--size", "32M"]);
        let len0 = std::fs::metadata(&img).unwrap().len();
        let out = ok(&["reserve", &img, "3M"]);
        assert!(out.contains("added"), "{}", out);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), len0 + (3 << 20), "{}", name);
        let info = ok(&["info", "--json", &img]);
        assert_eq!(json_field(&info, "layers.0.slack_bytes"), (3u64 << 20).to_string(), "{}", name);
        qemu_io(fmt, &img, &["write -P 0x33 0 4k"]);
        if fmt != "vpc" {
            qemu_img(&["check", "-f", fmt, &img]);
        }
        ok(&["trim", &img]);
        let info = ok(&["info", "--json", &img]);
        assert_eq!(json_field(&info, "layers.0.slack_bytes"), "0", "{}", name);
        let raw = dir.path("out.raw");
        let _ = std::fs::remove_file(&raw);
        qemu_img(&["convert", "-f", fmt, "-O", "raw", &img, &raw]);
        let bytes = std::fs::read(&raw).unwrap();
        assert!(bytes[..4096].iter().all(|&b| b == 0x33) && bytes[4096..].iter().all(|&b| b == 0), "{}", name);
    }
    let e = err(&["reserve", &dir.path("nope.vhd"), "1M"]);
    assert!(e.contains("nope.vhd"), "{}", e);
    let flat = dir.path("f.img");
    ok(&["create", &flat, "--size", "1M"]);
    let e = err(&["reserve", &flat, "1M"]);
    assert!(e.contains("no allocation tables"), "{}", e);
}

fn read_chain(path: &str) -> Vec<u8> {
    use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
    let (layers, _) = open_chain(path, &mut StdLocator::default(), &ChainOptions::default()).unwrap();
    let mut d = vboot::image::Disk::new(layers, Vec::new()).unwrap();
    let mut v = vec![0u8; (d.sectors() * 512) as usize];
    d.read(0, &mut v).unwrap();
    v
}

#[test]
fn merge_folds_a_child_into_its_parent() {
    use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
    let dir = TempDir::new("merge");
    for (ext, fmt) in [("vhd", "vpc"), ("vdi", "vdi"), ("vmdk", "vmdk")] {
        let base = dir.path(&format!("base.{}", ext));
        let child = dir.path(&format!("child.{}", ext));
        ok(&["create", &base, "--size", "16M"]);
        qemu_io(fmt, &base, &["write -P 0x11 0 3m", "write -P 0x12 8m 1m"]);
        ok(&["snapshot", &base, &child]);
        {
            let (layers, _) = open_chain(&child, &mut StdLocator { writable_leaf: true }, &ChainOptions::default()).unwrap();
            let mut d = vboot::image::Disk::new(layers, Vec::new()).unwrap();
            d.write(100, &vec![0x21; 512 * 3]).unwrap();
            d.write(5000, &vec![0x22; 512 * 700]).unwrap();
            d.write(30000, &vec![0x23; 512]).unwrap();
        }
        let before = read_chain(&child);
        let out = vdisk(&["merge", &child]);
        assert!(out.status.success(), "{}: {}", ext, String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("100%"), "progress shown");
        assert!(read_chain(&base) == before, "{}: the parent now holds the child's content", ext);
        assert!(read_chain(&child) == before, "{}: the child still reads the same and opens strictly", ext);
        if fmt != "vpc" {
            qemu_img(&["check", "-f", fmt, &base]);
        }
        let raw = dir.path("m.raw");
        let _ = std::fs::remove_file(&raw);
        qemu_img(&["convert", "-f", fmt, "-O", "raw", &base, &raw]);
        assert!(std::fs::read(&raw).unwrap() == before, "{}: qemu reads the merged parent the same", ext);
    }
    let e = err(&["merge", &dir.path("base.vhd")]);
    assert!(e.contains("not a differencing image"), "{}", e);
}

#[test]
fn restore_empties_a_snapshot() {
    let dir = TempDir::new("restore");
    for (ext, fmt) in [("vhd", "vpc"), ("vdi", "vdi"), ("vmdk", "vmdk")] {
        let base = dir.path(&format!("base.{}", ext));
        let child = dir.path(&format!("child.{}", ext));
        ok(&["create", &base, "--size", "16M"]);
        qemu_io(fmt, &base, &["write -P 0x11 0 3m"]);
        ok(&["snapshot", &base, &child, "--reserve", "4M"]);
        let before = read_chain(&child);
        {
            use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
            let (layers, _) = open_chain(&child, &mut StdLocator { writable_leaf: true }, &ChainOptions::default()).unwrap();
            let mut d = vboot::image::Disk::new(layers, Vec::new()).unwrap();
            d.write(100, &vec![0x21; 512 * 3]).unwrap();
        }
        assert!(read_chain(&child) != before);
        let len = std::fs::metadata(&child).unwrap().len();
        let out = ok(&["restore", &child]);
        assert!(out.contains("emptied"), "{}", out);
        assert!(read_chain(&child) == before, "{}", ext);
        assert_eq!(std::fs::metadata(&child).unwrap().len(), len);
        if fmt == "vmdk" {
            qemu_img(&["check", "-f", "vmdk", &child]);
            let raw = dir.path("r.raw");
            let _ = std::fs::remove_file(&raw);
            qemu_img(&["convert", "-f", "vmdk", "-O", "raw", &child, &raw]);
            assert!(std::fs::read(&raw).unwrap() == before);
        }
    }
    let e = err(&["restore", &dir.path("base.vdi")]);
    assert!(e.contains("not a differencing image"), "{}", e);
}

#[test]
fn relink_after_qemu_commit() {
    // qemu-img commit changes the base's CID and leaves the child's parentCID stale.
    let dir = TempDir::new("relink");
    let base = dir.path("base.vmdk");
    let child = dir.path("child.vmdk");
    ok(&["create", &base, "--size", "16M"]);
    ok(&["snapshot", &base, &child]);
    qemu_io("vmdk", &child, &["write -P 0x44 1m 64k"]);
    qemu_img(&["commit", "-f", "vmdk", &child]);
    let e = err(&["info", &child]);
    assert!(e.contains("CID"), "{}", e);
    ok(&["info", "--lenient-cid", &child]);
    let out = ok(&["relink", &child]);
    assert!(out.contains("now expects"), "{}", out);
    ok(&["info", &child]);
    let raw = dir.path("c.raw");
    qemu_img(&["convert", "-f", "vmdk", "-O", "raw", &child, &raw]);
    let bytes = std::fs::read(&raw).unwrap();
    assert!(bytes[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x44));
    assert!(read_chain(&child) == bytes);
}
