//! The `vdisk` command line, checked against qemu-img/qemu-io (Debian qemu-utils) and the
//! distribution's python3 (JSON validation).

use vboot_tests::{qemu_img, qemu_io, TempDir};
use std::process::{Command, Output};

/// Build vdisk once (it is another package of the workspace) and return its path.
fn vdisk(args: &[&str]) -> Output {
    Command::new(vboot_tests::vdisk_bin()).args(args).output().unwrap()
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
        let img = dir.file(&format!("{}.img", variant));
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
    let base = dir.file("base.vmdk");
    ok(&["create", &base, "--size", "64M"]);
    qemu_io("vmdk", &base, &["write -P 0x11 0 1m"]);
    let child = dir.file("child.vmdk");
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
        let b = dir.file(&format!("b.{}", ext));
        let c = dir.file(&format!("c.{}", ext));
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
    let a = dir.file("a.vhd");
    ok(&["create", &a, "--size", "8M"]);
    let before = std::fs::read(&a).unwrap();
    let e = err(&["create", &a, "--size", "8M"]);
    assert!(e.contains("already exists"), "{}", e);
    assert_eq!(std::fs::read(&a).unwrap(), before);
    let e = err(&["create", &dir.file("b.vhd"), "--size", "12345"]);
    assert!(e.contains("multiple of 512"), "{}", e);
    let e = err(&["create", &dir.file("b.qcow"), "--size", "8M"]);
    assert!(e.contains("--format"), "{}", e);
    let e = err(&["create", &dir.file("b.img"), "--format", "qcow9", "--size", "8M"]);
    assert!(e.contains("unknown format") && e.contains("vhd-dynamic"), "{}", e);
    let e = err(&["create", &dir.file("b.vdi"), "--parent", &a]);
    assert!(e.contains("b.vdi") && e.contains("vhd"), "{}", e);
    let e = err(&["snapshot", &dir.file("missing.vhd"), &dir.file("c.vhd")]);
    assert!(e.contains("missing.vhd"), "{}", e);
    // A child whose parent vanished: the message names the child, the expected identity and
    // each place searched.
    let child = dir.file("child.vhd");
    ok(&["snapshot", &a, &child]);
    std::fs::remove_file(&a).unwrap();
    let e = err(&["info", &child]);
    assert!(e.contains("child.vhd") && e.contains("Unique Id") && e.contains("a.vhd: not found"), "{}", e);
    let o = vdisk(&["check", &child]);
    assert_eq!(o.status.code(), Some(1));
    // No temporary files left behind by any of the failures.
    let left: Vec<String> = std::fs::read_dir(&dir.path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, vec!["child.vhd".to_string()], "{:?}", left);
}

#[test]
fn convert_keeps_the_content() {
    let dir = TempDir::new("convert");
    let src = dir.file("src.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &src, "64M"]);
    qemu_io("vmdk", &src, &["write -P 0x5A 1m 300k", "write -P 0xA5 40m 4k"]);
    for (target, fmt, variant) in [("t.vhd", "vpc", None), ("t.vdi", "vdi", None), ("t2.vmdk", "vmdk", None), ("t.img", "raw", None), ("t3.vmdk", "vmdk", Some("vmdk-twoGbMaxExtentSparse")), ("t4.vmdk", "vmdk", Some("vmdk-monolithicFlat"))] {
        let t = dir.file(target);
        match variant {
            Some(v) => ok(&["convert", &src, &t, "--format", v]),
            None => ok(&["convert", &src, &t]),
        };
        let cmp = Command::new("qemu-img").args(["compare", "-f", "vmdk", "-F", fmt, &src, &t]).output().expect("qemu-img (Debian qemu-utils)");
        assert!(cmp.status.success(), "{}: {}{}", target, String::from_utf8_lossy(&cmp.stdout), String::from_utf8_lossy(&cmp.stderr));
    }
    let left: Vec<String> = std::fs::read_dir(&dir.path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "temporary files left: {:?}", left);
}

#[test]
fn reserve_and_trim_slack() {
    let dir = TempDir::new("slack");
    for (name, fmt) in [("r.vhd", "vpc"), ("r.vdi", "vdi"), ("r.vmdk", "vmdk")] {
        let img = dir.file(name);
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
        let raw = dir.file("out.raw");
        let _ = std::fs::remove_file(&raw);
        qemu_img(&["convert", "-f", fmt, "-O", "raw", &img, &raw]);
        let bytes = std::fs::read(&raw).unwrap();
        assert!(bytes[..4096].iter().all(|&b| b == 0x33) && bytes[4096..].iter().all(|&b| b == 0), "{}", name);
    }
    let e = err(&["reserve", &dir.file("nope.vhd"), "1M"]);
    assert!(e.contains("nope.vhd"), "{}", e);
    let flat = dir.file("f.img");
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
        let base = dir.file(&format!("base.{}", ext));
        let child = dir.file(&format!("child.{}", ext));
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
        // Into a pipe, no progress (it showed "merging [...] N%" lines before vdisk used indicatif).
        assert!(out.stderr.is_empty(), "{}: progress into a pipe: {}", ext, String::from_utf8_lossy(&out.stderr));
        assert!(read_chain(&base) == before, "{}: the parent now holds the child's content", ext);
        assert!(read_chain(&child) == before, "{}: the child still reads the same and opens strictly", ext);
        if fmt != "vpc" {
            qemu_img(&["check", "-f", fmt, &base]);
        }
        let raw = dir.file("m.raw");
        let _ = std::fs::remove_file(&raw);
        qemu_img(&["convert", "-f", fmt, "-O", "raw", &base, &raw]);
        assert!(std::fs::read(&raw).unwrap() == before, "{}: qemu reads the merged parent the same", ext);
    }
    let e = err(&["merge", &dir.file("base.vhd")]);
    assert!(e.contains("not a differencing image"), "{}", e);
}

#[test]
fn restore_empties_a_snapshot() {
    let dir = TempDir::new("restore");
    for (ext, fmt) in [("vhd", "vpc"), ("vdi", "vdi"), ("vmdk", "vmdk")] {
        let base = dir.file(&format!("base.{}", ext));
        let child = dir.file(&format!("child.{}", ext));
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
            let raw = dir.file("r.raw");
            let _ = std::fs::remove_file(&raw);
            qemu_img(&["convert", "-f", "vmdk", "-O", "raw", &child, &raw]);
            assert!(std::fs::read(&raw).unwrap() == before);
        }
    }
    let e = err(&["restore", &dir.file("base.vdi")]);
    assert!(e.contains("not a differencing image"), "{}", e);
}

#[test]
fn relink_after_qemu_commit() {
    // qemu-img commit changes the base's CID and leaves the child's parentCID stale.
    let dir = TempDir::new("relink");
    let base = dir.file("base.vmdk");
    let child = dir.file("child.vmdk");
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
    let raw = dir.file("c.raw");
    qemu_img(&["convert", "-f", "vmdk", "-O", "raw", &child, &raw]);
    let bytes = std::fs::read(&raw).unwrap();
    assert!(bytes[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x44));
    assert!(read_chain(&child) == bytes);
}

/// The command line in the usual style: --help lists every subcommand, --version, and a wrong
/// option or subcommand is a usage error with exit status 2 (a failed command is also 2, a
/// check that finds problems 1).
#[test]
fn command_line_help_version_and_usage_errors() {
    let help = vdisk(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("Usage: vdisk <COMMAND>"), "{}", text);
    for sub in ["create", "info", "check", "map", "snapshot", "convert", "merge", "restore", "relink", "reserve", "trim"] {
        assert!(text.contains(&format!("  {} ", sub)), "--help lists {}: {}", sub, text);
    }
    let info_help = String::from_utf8_lossy(&vdisk(&["info", "--help"]).stdout).into_owned();
    for opt in ["--json", "--output <FORMAT>", "--parent-dir <DIR>", "--lenient-cid"] {
        assert!(info_help.contains(opt), "info --help lists {}: {}", opt, info_help);
    }
    let version = vdisk(&["--version"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("vdisk {}", env!("CARGO_PKG_VERSION")));
    for wrong in [&["info", "x.vhd", "--bogus"][..], &["frobnicate"], &[], &["info", "x.vhd", "--output", "xml"], &["trim"], &["create", "x.vhd", "--size", "12Q"]] {
        let o = vdisk(wrong);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{:?}: {}", wrong, stderr);
        assert!(stderr.contains("error:") || stderr.contains("Usage:"), "{:?}: {}", wrong, stderr);
    }
}

/// `vdisk info --output json` (qemu-img's spelling) parsed by python3's json module: sizes are
/// JSON numbers and agree with `qemu-img info --output json` on images qemu-img made, and
/// `map --output json` covers the disk with numbers too.
#[test]
fn info_output_json_has_numbers_that_qemu_img_agrees_with() {
    let dir = TempDir::new("json");
    // (qemu-img format, file, options, the qemu-img field to compare with block_size_bytes)
    for (fmt, name, opts, cluster) in [
        ("vpc", "d.vhd", "subformat=dynamic", true),
        ("vpc", "f.vhd", "subformat=fixed", false),
        ("vmdk", "s.vmdk", "subformat=monolithicSparse", false),
        ("vdi", "d.vdi", "static=off", true),
        ("raw", "r.img", "", false),
    ] {
        let img = dir.file(name);
        let mut args = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([img.as_str(), "48M"]);
        qemu_img(&args);
        qemu_io(fmt, &img, &["write -P 0x5a 1m 3m"]);
        let theirs_path = dir.file(&format!("{}.qemu.json", name));
        let ours_path = dir.file(&format!("{}.vdisk.json", name));
        let map_path = dir.file(&format!("{}.map.json", name));
        std::fs::write(&theirs_path, qemu_img(&["info", "--output", "json", "-f", fmt, &img])).unwrap();
        std::fs::write(&ours_path, ok(&["info", &img, "--output", "json"])).unwrap();
        std::fs::write(&map_path, ok(&["map", &img, "--output=json"])).unwrap();
        let script = r#"
import json, sys
theirs = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
runs = json.load(open(sys.argv[3]))
compare_cluster = sys.argv[4] == "1"
def number(v, what):
    assert type(v) is int, "%s is %r, not a JSON number" % (what, v)
    return v
assert number(ours["virtual_size_bytes"], "virtual_size_bytes") == theirs["virtual-size"], (ours["virtual_size_bytes"], theirs["virtual-size"])
layer = ours["layers"][0]
assert number(layer["virtual_size_bytes"], "layer virtual_size_bytes") == theirs["virtual-size"]
assert number(ours["chain_depth"], "chain_depth") == 1
assert number(ours["data_bytes"], "data_bytes") >= 3 << 20
number(ours["map_runs"], "map_runs")
assert layer["differencing"] is False
for key in ("slack_bytes", "block_size_bytes", "allocated_blocks", "blocks", "bat_entries", "current_size_bytes", "timestamp"):
    if key in layer:
        number(layer[key], key)
if compare_cluster:
    assert layer["block_size_bytes"] == theirs["cluster-size"], (layer["block_size_bytes"], theirs["cluster-size"])
end = 0
for run in runs:
    assert number(run["start_sector"], "start_sector") == end
    end += number(run["sectors"], "sectors")
    assert run["kind"] in ("zero", "data", "compressed")
    assert (run["offset_bytes"] is None) == (run["kind"] == "zero")
assert end * 512 == theirs["virtual-size"], (end, theirs["virtual-size"])
print("agree")
"#;
        let out = Command::new("/usr/bin/python3")
            .args(["-c", script, &theirs_path, &ours_path, &map_path, if cluster { "1" } else { "0" }])
            .output()
            .expect("cannot run /usr/bin/python3 (Debian python3)");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("agree"),
            "{}: {}\nqemu-img: {}\nvdisk: {}",
            name,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&theirs_path).unwrap(),
            std::fs::read_to_string(&ours_path).unwrap()
        );
    }
    // --json and --output json are one option: both together with another format is refused.
    let e = err(&["info", &dir.file("r.img"), "--json", "--output", "human"]);
    assert!(e.contains("cannot be used with"), "{}", e);
}

/// Progress is for people: a convert whose stderr is a pipe writes nothing there, while the same
/// convert on a terminal (a pseudo-terminal from util-linux's `script`) draws a bar.
#[test]
fn progress_only_on_a_terminal() {
    let dir = TempDir::new("progress");
    let src = dir.file("src.img");
    qemu_img(&["create", "-q", "-f", "raw", &src, "64M"]);
    qemu_io("raw", &src, &["write -P 0x77 0 48m"]);
    let piped = vdisk(&["convert", &src, &dir.file("piped.vdi")]);
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert!(piped.stderr.is_empty(), "progress lines into a pipe: {:?}", String::from_utf8_lossy(&piped.stderr));
    assert!(String::from_utf8_lossy(&piped.stdout).contains("converted"), "the result is still on stdout");
    let command = format!("{} convert {} {}", vboot_tests::vdisk_bin().display(), src, dir.file("tty.vdi"));
    let tty = Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script (Debian bsdutils)");
    let seen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{}", seen);
    assert!(seen.contains("converting [") && seen.contains("MiB"), "no progress bar on a terminal: {:?}", seen);
    let cmp = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "vdi", &src, &dir.file("tty.vdi")]).output().unwrap();
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stdout));
}

/// `immutable-child` (issue 17): the child stage2 looks for beside the image, in its format, with
/// the asked slack; for a raw image a VMDK child over a flat descriptor naming it, which qemu-img
/// reads as the raw bytes; an existing child is never overwritten.
#[test]
fn immutable_child_is_made_where_vboot_looks_and_raw_goes_through_a_flat_descriptor() {
    let dir = TempDir::new("immutable-child");
    for ext in ["vhd", "vdi", "vmdk"] {
        let base = dir.file(&format!("base.{}", ext));
        ok(&["create", &base, "--size", "16M"]);
        let out = ok(&["immutable-child", &base, "--reserve", "4M"]);
        let child = dir.file(&format!("base.immutable.{}", ext));
        assert!(out.contains("is the throwaway child for `immutable`") && out.contains("4.0 MiB"), "{}", out);
        let info = ok(&["info", "--json", &child]);
        assert!(json_field(&info, "layers.1.file").ends_with(&format!("base.{}", ext)), "{}", info);
        assert_eq!(json_field(&info, "layers.0.slack_bytes"), "4194304", "{}", info);
        let e = err(&["immutable-child", &base]);
        assert!(e.contains("already exists"), "{}", e);
    }
    let raw = dir.file("disk.img");
    let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, &bytes).unwrap();
    let out = ok(&["immutable-child", &raw, "--reserve", "1M"]);
    assert!(out.contains("disk.immutable-raw.vmdk, a VMDK descriptor naming the raw"), "{}", out);
    let child = dir.file("disk.immutable.vmdk");
    qemu_img(&["check", "-f", "vmdk", &child]);
    let back = dir.file("disk.back");
    qemu_img(&["convert", "-f", "vmdk", "-O", "raw", &child, &back]);
    assert!(std::fs::read(&back).unwrap() == bytes, "qemu-img does not read the raw image through its child");
    let other = ok(&["immutable-child", &raw, "--child", &dir.file("elsewhere.vmdk"), "--reserve", "1M"]);
    assert!(other.contains("immutable_child="), "{}", other);
}
