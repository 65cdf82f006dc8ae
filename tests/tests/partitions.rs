//! Partition discovery against tables made by `sfdisk` and `sgdisk`, checked against what those
//! tools themselves report (`sfdisk --json`, `sgdisk -i`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vboot::block::FileDisk;
use vboot::part::{
    format_guid, read_partitions, GptHeaderUsed, PartError, PartitionKind, PartitionTable, Scheme,
    GPT_TYPE_BIOS_BOOT,
};

/// A sparse image file under the temp dir, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(tag: &str, bytes: u64) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "vboot-part-{}-{}-{}.img",
            tag,
            std::process::id(),
            n
        ));
        let f = std::fs::File::create(&path).expect("create temp image");
        f.set_len(bytes).expect("size temp image");
        TempImage(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn read_table(&self) -> Result<PartitionTable, PartError> {
        let mut disk = FileDisk::open(self.path(), false).expect("open image");
        read_partitions(&mut disk)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run a host tool; a missing tool fails the test naming its Debian package.
fn run(tool: &str, package: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(tool);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run {} ({}): install the Debian package `{}`",
            tool, e, package
        ),
    };
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {:?} failed: {}",
        tool,
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sfdisk(img: &TempImage, script: &str) {
    run(
        "sfdisk",
        "fdisk",
        &["-q", img.path().to_str().unwrap()],
        Some(script),
    );
}

fn sgdisk(img: &TempImage, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.push(img.path().to_str().unwrap());
    run("sgdisk", "gdisk", &all, None)
}

/// What `sfdisk --json` says about a disk: the top-level fields and one map per partition, with
/// the partition number taken from the node name. The output is one `"key": value` per line, so a
/// line scanner is enough (and avoids a JSON dependency).
struct SfdiskView {
    top: BTreeMap<String, String>,
    partitions: Vec<(u32, BTreeMap<String, String>)>,
}

fn sfdisk_json(img: &TempImage) -> SfdiskView {
    let text = run(
        "sfdisk",
        "fdisk",
        &["--json", img.path().to_str().unwrap()],
        None,
    );
    let mut view = SfdiskView {
        top: BTreeMap::new(),
        partitions: Vec::new(),
    };
    let mut in_partitions = false;
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches("},{")
            .trim_start_matches('{')
            .trim();
        if line.starts_with("\"partitions\"") {
            in_partitions = true;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches('"').to_string();
        let value = value
            .trim()
            .trim_end_matches(',')
            .trim_matches('"')
            .to_string();
        if !in_partitions {
            view.top.insert(key, value);
        } else if key == "node" {
            let digits: String = value
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            view.partitions
                .push((digits.parse().unwrap(), BTreeMap::new()));
            view.partitions.last_mut().unwrap().1.insert(key, value);
        } else if let Some(p) = view.partitions.last_mut() {
            p.1.insert(key, value);
        }
    }
    view
}

/// Compare our reading of an image with `sfdisk --json`.
fn assert_matches_sfdisk(img: &TempImage, table: &PartitionTable) {
    let view = sfdisk_json(img);
    assert_eq!(
        table
            .partitions
            .iter()
            .map(|p| p.number)
            .collect::<Vec<_>>(),
        view.partitions.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "partition numbers"
    );
    for (p, (n, fields)) in table.partitions.iter().zip(&view.partitions) {
        assert_eq!(p.number, *n);
        assert_eq!(p.start_lba.to_string(), fields["start"], "start of {}", n);
        assert_eq!(p.sectors.to_string(), fields["size"], "size of {}", n);
        match &p.kind {
            PartitionKind::Mbr { type_byte, active } => {
                assert_eq!(format!("{:x}", type_byte), fields["type"], "type of {}", n);
                assert_eq!(
                    *active,
                    fields.get("bootable").map(|b| b == "true").unwrap_or(false)
                );
            }
            PartitionKind::Gpt {
                type_guid,
                unique_guid,
                name,
            } => {
                assert_eq!(format_guid(type_guid), fields["type"]);
                assert_eq!(format_guid(unique_guid), fields["uuid"]);
                assert_eq!(name, fields.get("name").map(String::as_str).unwrap_or(""));
            }
        }
    }
    match table.scheme {
        Scheme::Mbr => {
            assert_eq!(view.top["label"], "dos");
            assert_eq!(format!("{:#010x}", table.mbr_signature), view.top["id"]);
        }
        Scheme::Gpt | Scheme::Hybrid => {
            assert_eq!(view.top["label"], "gpt");
            assert_eq!(format_guid(&table.disk_guid.unwrap()), view.top["id"]);
        }
    }
}

#[test]
fn mbr_primaries_and_logicals_like_sfdisk_sees_them() {
    let img = TempImage::new("mbr", 256 << 20);
    sfdisk(
        &img,
        "label: dos\nlabel-id: 0xdeadbeef\n\
         start=2048, size=40960, type=c, bootable\n\
         size=20480, type=83\n\
         type=5\n\
         size=16384, type=7\n\
         size=8192, type=83\n\
         size=8192, type=b\n\
         size=4096, type=82\n",
    );
    let t = img.read_table().unwrap();
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_eq!(t.partitions.len(), 7);
    assert_matches_sfdisk(&img, &t);
    let describe: Vec<&str> = t.partitions.iter().map(|p| p.describe()).collect();
    assert_eq!(
        describe,
        [
            "FAT32 LBA",
            "Linux",
            "extended",
            "NTFS/exFAT",
            "Linux",
            "FAT32",
            "Linux swap"
        ]
    );
    assert_eq!(t.find(7).unwrap().describe(), "FAT32");
    assert_eq!(t.find(8).unwrap().describe(), "Linux swap");
    assert!(t.find(4).is_none());
}

#[test]
fn mbr_with_empty_slot_and_lba_extended_in_slot_four() {
    // The layout users end up with after deleting partition 2: slot 2 empty, extended (0x0F)
    // in slot 4, logicals still 5, 6.
    let img = TempImage::new("mbr-gap", 128 << 20);
    sfdisk(
        &img,
        "label: dos\n\
         start=2048, size=20480, type=6\n\
         start=22528, size=10240, type=83\n\
         start=40960, size=20480, type=e\n\
         start=81920, type=f\n\
         size=10240, type=83\n\
         type=c\n",
    );
    run(
        "sfdisk",
        "fdisk",
        &["-q", "--delete", img.path().to_str().unwrap(), "2"],
        None,
    );
    let t = img.read_table().unwrap();
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 3, 4, 5, 6]);
    assert_matches_sfdisk(&img, &t);
    assert_eq!(t.find(4).unwrap().describe(), "extended LBA");
    assert!(t.find(4).unwrap().is_extended());
    assert_eq!(t.find(3).unwrap().describe(), "FAT16 LBA");
}

fn make_gpt(img: &TempImage) {
    sgdisk(
        img,
        &[
            "-o",
            "-n",
            "1:2048:+1M",
            "-t",
            "1:EF02",
            "-c",
            "1:BIOS boot partition",
            "-n",
            "2:0:+32M",
            "-t",
            "2:EF00",
            "-c",
            "2:EFI system",
            "-n",
            "3:0:+40M",
            "-t",
            "3:0700",
            "-c",
            "3:Données Windows",
            "-n",
            "5:0:+20M",
            "-t",
            "5:8300",
            "-c",
            "5:linux root",
            "-n",
            "6:0:0",
            "-t",
            "6:8200",
        ],
    );
}

/// `sgdisk -i N` fields: type GUID, unique GUID, first and last sector, name.
fn sgdisk_info(img: &TempImage, number: u32) -> BTreeMap<String, String> {
    let text = sgdisk(img, &["-i", &number.to_string()]);
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    m
}

fn assert_matches_sgdisk(img: &TempImage, t: &PartitionTable) {
    for p in &t.partitions {
        let info = sgdisk_info(img, p.number);
        let PartitionKind::Gpt {
            type_guid,
            unique_guid,
            name,
        } = &p.kind
        else {
            panic!("partition {} is not a GPT partition", p.number)
        };
        let type_field = &info["Partition GUID code"];
        assert!(
            type_field.starts_with(&format_guid(type_guid)),
            "{} vs {}",
            type_field,
            p.number
        );
        assert_eq!(info["Partition unique GUID"], format_guid(unique_guid));
        assert_eq!(
            info["First sector"].split(' ').next().unwrap(),
            p.start_lba.to_string()
        );
        assert_eq!(
            info["Last sector"].split(' ').next().unwrap(),
            (p.start_lba + p.sectors - 1).to_string()
        );
        assert_eq!(info["Partition name"], format!("'{}'", name));
    }
}

#[test]
fn gpt_like_sgdisk_and_sfdisk_see_it() {
    let img = TempImage::new("gpt", 128 << 20);
    make_gpt(&img);
    let t = img.read_table().unwrap();
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(t.gpt_header, Some(GptHeaderUsed::Primary));
    assert!(t.warnings.is_empty());
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 5, 6]);
    let describe: Vec<&str> = t.partitions.iter().map(|p| p.describe()).collect();
    assert_eq!(
        describe,
        [
            "BIOS boot",
            "EFI System",
            "Microsoft basic data",
            "Linux",
            "Linux swap"
        ]
    );
    match &t.find(1).unwrap().kind {
        PartitionKind::Gpt { type_guid, .. } => assert_eq!(*type_guid, GPT_TYPE_BIOS_BOOT),
        k => panic!("{:?}", k),
    }
    assert_matches_sfdisk(&img, &t);
    assert_matches_sgdisk(&img, &t);
}

#[test]
fn damaged_primary_gpt_falls_back_to_backup() {
    let img = TempImage::new("gpt-damaged", 128 << 20);
    make_gpt(&img);
    let good = img.read_table().unwrap();
    // Scribble over the primary header's disk GUID: its CRC no longer matches.
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap();
        f.seek(SeekFrom::Start(512 + 60)).unwrap();
        f.write_all(&[0x5A; 4]).unwrap();
    }
    let t = img.read_table().unwrap();
    assert_eq!(t.gpt_header, Some(GptHeaderUsed::Backup));
    assert_eq!(t.partitions, good.partitions);
    assert_eq!(t.disk_guid, good.disk_guid);
    assert_eq!(t.warnings.len(), 1);
    assert!(
        t.warnings[0].contains("primary GPT header"),
        "{}",
        t.warnings[0]
    );

    // Then the primary entry array instead (header intact): still the backup.
    let img = TempImage::new("gpt-damaged-entries", 128 << 20);
    make_gpt(&img);
    let good = img.read_table().unwrap();
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap();
        f.seek(SeekFrom::Start(2 * 512 + 8)).unwrap();
        f.write_all(&[0x5A; 8]).unwrap();
    }
    let t = img.read_table().unwrap();
    assert_eq!(t.gpt_header, Some(GptHeaderUsed::Backup));
    assert_eq!(t.partitions, good.partitions);
    assert!(t.warnings[0].contains("entries CRC32"), "{}", t.warnings[0]);

    // Both gone: an error that names both.
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(img.path())
            .unwrap();
        f.seek(SeekFrom::Start((128 << 20) - 512)).unwrap();
        f.write_all(&[0u8; 512]).unwrap();
    }
    let e = img.read_table().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("primary") && msg.contains("backup"), "{}", msg);
}

#[test]
fn hybrid_mbr_reports_hybrid_and_uses_gpt() {
    let img = TempImage::new("hybrid", 128 << 20);
    make_gpt(&img);
    // Put GPT partitions 2 and 3 into the MBR as well, as Boot Camp-style tools do.
    sgdisk(&img, &["-h", "2:3"]);
    let t = img.read_table().unwrap();
    assert_eq!(t.scheme, Scheme::Hybrid);
    assert_eq!(t.partitions.len(), 5);
    assert_matches_sgdisk(&img, &t);
    assert_eq!(t.find(3).unwrap().describe(), "Microsoft basic data");
}

#[test]
fn unpartitioned_and_blank_disks_are_clear_errors() {
    let img = TempImage::new("blank", 1 << 20);
    let e = img.read_table().unwrap_err();
    assert!(matches!(e, PartError::NoSignature { lba: 0, .. }));
    assert!(e.to_string().contains("no partition table"), "{}", e);

    // A whole-disk FAT volume ("superfloppy") has 55 AA and an all-zero slot area: an empty
    // table, with a warning that points at the real situation.
    let img = TempImage::new("superfloppy", 32 << 20);
    run(
        "mkfs.fat",
        "dosfstools",
        &["-F", "16", img.path().to_str().unwrap()],
        None,
    );
    let t = img.read_table().unwrap();
    assert!(t.partitions.is_empty());
    assert!(
        t.warnings[0].contains("not partitioned"),
        "{:?}",
        t.warnings
    );
}
