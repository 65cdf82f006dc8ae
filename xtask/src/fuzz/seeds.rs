//! `cargo xtask fuzz --make-seeds`: the seed corpora of `fuzz/seeds/`, made by the real tools
//! and kept small: every disk, filesystem and image seed is written in the sparse format of
//! `fuzz/src/sparse.rs` (zero sectors dropped), so a 64 MiB mkfs image is a few KiB.

use crate::{root, run};
use std::path::{Path, PathBuf};
use std::process::Command;

use vboot::image::create::{self, CreateOptions, Variant};

/// The separator of the image targets' multi-file inputs (`fuzz/src/images.rs`).
const FILE_SEPARATOR: &[u8] = b"=VBOOT-FUZZ-FILE=";

/// `bytes` in the sparse format: declared length, then the runs of non-zero 512-byte sectors.
pub fn sparse(bytes: &[u8]) -> Vec<u8> {
    let mut out = b"VSP1".to_vec();
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    let mut at = 0usize;
    while at < bytes.len() {
        let end = (at + 512).min(bytes.len());
        if bytes[at..end].iter().all(|&b| b == 0) {
            at = end;
            continue;
        }
        let start = at;
        while at < bytes.len() {
            let end = (at + 512).min(bytes.len());
            if bytes[at..end].iter().all(|&b| b == 0) {
                break;
            }
            at = end;
        }
        out.extend_from_slice(&(start as u64).to_le_bytes());
        out.extend_from_slice(&((at - start) as u32).to_le_bytes());
        out.extend_from_slice(&bytes[start..at]);
    }
    out
}

struct Maker {
    work: PathBuf,
    out: PathBuf,
    made: Vec<(String, usize)>,
}

fn sh(cmd: &str, dir: &Path) -> Result<(), String> {
    run(Command::new("sh").arg("-c").arg(cmd).current_dir(dir))
}

impl Maker {
    fn p(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.p(name)).map_err(|e| format!("{}: {}", name, e))
    }
    fn seed(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())?;
        self.made.push((format!("{}/{}", target, name), bytes.len()));
        Ok(())
    }
    /// A seed made of work files: the first is the leaf, the others are named.
    fn files(&mut self, target: &str, name: &str, files: &[&str], names: &[&str]) -> Result<(), String> {
        let mut v = sparse(&self.read(files[0])?);
        for (f, n) in files.iter().zip(names).skip(1) {
            v.extend_from_slice(FILE_SEPARATOR);
            v.extend_from_slice(n.as_bytes());
            v.push(b'\n');
            v.extend_from_slice(&sparse(&self.read(f)?));
        }
        self.seed(target, name, &v)
    }
    fn sh(&self, cmd: &str) -> Result<(), String> {
        sh(cmd, &self.work)
    }
}

pub fn make() -> Result<(), String> {
    let root = root();
    let work = root.join("target/fuzz-seeds-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let out = root.join("fuzz/seeds");
    let _ = std::fs::remove_dir_all(&out);
    let mut m = Maker { work, out, made: Vec::new() };

    // A tree to put on every filesystem.
    m.sh("mkdir -p tree/boot/grub tree/images/sub && printf 'set timeout=3\\nmenuentry A {\\n vboot harddisk=/images/a.vhd\\n}\\n' > tree/boot/grub/grub.cfg \
          && head -c 3000 /dev/urandom > tree/images/a.vhd && echo hello > 'tree/images/sub/a long file name.txt' && echo x > tree/UPPER.TXT")?;

    // Partition tables.
    m.sh("truncate -s 64M mbr.img && printf 'label: dos\\n2048,20480,c,*\\n22528,20480,83\\n43008,,5\\n45056,4096,83\\n51200,4096,7\\n' | sfdisk -q mbr.img")?;
    m.sh("truncate -s 64M gpt.img && sgdisk -a 1 -n 1:34:2047 -t 1:ef02 -n 2:2048:40000 -t 2:0700 -c 2:data -n 3:40960:0 -t 3:8300 gpt.img >/dev/null")?;
    m.sh("cp gpt.img hybrid.img && sgdisk -h 2 hybrid.img >/dev/null")?;
    for f in ["mbr", "gpt", "hybrid"] {
        let b = sparse(&m.read(&format!("{}.img", f))?);
        // The trailing odd byte asks the harness to fix the GPT CRCs after mutation.
        let mut b2 = b.clone();
        b2.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        m.seed("part", &format!("{}.vsp", f), &b)?;
        m.seed("part", &format!("{}-fixcrc.vsp", f), &b2)?;
    }

    // FAT12/16/32 with mtools.
    for (name, size, args) in [("fat12", "1440K", "-F 12"), ("fat16", "16M", "-F 16"), ("fat32", "40M", "-F 32 -s 1")] {
        m.sh(&format!(
            "truncate -s {size} {name}.img && mkfs.fat {args} -n FUZZ {name}.img >/dev/null && mmd -i {name}.img ::/boot ::/boot/grub ::/images ::/images/sub \
             && mcopy -i {name}.img tree/boot/grub/grub.cfg ::/boot/grub/ && mcopy -i {name}.img tree/images/a.vhd ::/images/ \
             && mcopy -i {name}.img 'tree/images/sub/a long file name.txt' ::/images/sub/ && mcopy -i {name}.img tree/UPPER.TXT ::/"
        ))?;
        let b = sparse(&m.read(&format!("{}.img", name))?);
        m.seed("fs_fat", &format!("{}.vsp", name), &b)?;
    }
    // exFAT: mkfs.exfat, files written with the core library's exFAT writer.
    m.sh("truncate -s 16M exfat.img && mkfs.exfat -q exfat.img >/dev/null 2>&1 || mkfs.exfat exfat.img >/dev/null")?;
    {
        let path = m.p("exfat.img");
        let dev = vboot::block::FileDisk::open(&path, true).map_err(|e| e.to_string())?;
        let mut v = vboot::fs::volume::Volume::open(dev).map_err(|e| format!("exfat seed: {}", e))?;
        for (p, data) in [("/grub.cfg", &b"set timeout=1\nmenuentry X {\n vboot harddisk=/d.vdi\n}\n"[..]), ("/d.vdi", &[7u8; 3000][..])] {
            let f = v.create_file(p, data.len() as u64).map_err(|e| format!("exfat seed: {}", e))?;
            v.write_file(&f, 0, data).map_err(|e| format!("exfat seed: {}", e))?;
        }
    }
    let b = sparse(&m.read("exfat.img")?);
    m.seed("fs_exfat", "exfat.vsp", &b)?;
    // NTFS: mkntfs, files copied in with ntfscp.
    m.sh("truncate -s 8M ntfs.img && mkntfs -q -F -Q ntfs.img >/dev/null 2>&1 && ntfscp -f ntfs.img tree/boot/grub/grub.cfg grub.cfg >/dev/null 2>&1 \
          && ntfscp -f ntfs.img tree/images/a.vhd a.vhd >/dev/null 2>&1")?;
    // $LogFile is filled with FFh and the reader never looks at it: drop those sectors too.
    let mut b = m.read("ntfs.img")?;
    for s in b.chunks_mut(512) {
        if s.iter().all(|&x| x == 0xFF) {
            s.fill(0);
        }
    }
    let b = sparse(&b);
    m.seed("fs_ntfs", "ntfs.vsp", &b)?;
    // ext2/3/4 populated with mkfs -d.
    for (name, args) in [("ext2", "-t ext2 -b 1024"), ("ext3", "-t ext3 -b 1024 -I 128"), ("ext4", "-t ext4 -b 4096 -O ^has_journal"), ("ext4-64bit", "-t ext4 -b 1024 -O 64bit,metadata_csum,^has_journal -I 256")] {
        m.sh(&format!("truncate -s 8M {name}.img && mkfs.ext4 -q -F {args} -d tree -N 64 {name}.img >/dev/null 2>&1"))?;
        let b = sparse(&m.read(&format!("{}.img", name))?);
        m.seed("fs_ext", &format!("{}.vsp", name), &b)?;
    }

    // Images made by qemu-img: a raw disk with data in a few places.
    m.sh("truncate -s 64M data.raw && printf 'sector zero' | dd of=data.raw conv=notrunc status=none \
          && printf 'middle' | dd of=data.raw bs=1 seek=33554432 conv=notrunc status=none \
          && printf 'end' | dd of=data.raw bs=1 seek=67108000 conv=notrunc status=none")?;
    m.sh("qemu-img convert -q -f raw -O vpc data.raw dyn.vhd && qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 4M \
          && qemu-img create -q -f vpc empty.vhd 1G")?;
    for f in ["dyn", "fixed", "empty"] {
        let b = sparse(&m.read(&format!("{}.vhd", f))?);
        m.seed("image_vhd", &format!("{}.vsp", f), &b)?;
        let mut fixed = b.clone();
        // The tail's second byte set odd: the harness fixes VHD checksums after mutation.
        fixed.extend_from_slice(&[0u8, 1]);
        m.seed("image_vhd", &format!("{}-fixsum.vsp", f), &fixed)?;
    }
    m.sh("qemu-img convert -q -f raw -O vmdk data.raw sparse.vmdk && qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized data.raw stream.vmdk \
          && qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 1M && qemu-img convert -q -f raw -O vmdk -o subformat=twoGbMaxExtentSparse data.raw split.vmdk")?;
    m.files("image_vmdk", "sparse.vsp", &["sparse.vmdk"], &["disk.vmdk"])?;
    m.files("image_vmdk", "stream.vsp", &["stream.vmdk"], &["disk.vmdk"])?;
    m.files("image_vmdk", "flat.vsp", &["flat.vmdk", "flat-flat.vmdk"], &["disk.vmdk", "flat-flat.vmdk"])?;
    m.files("image_vmdk", "split.vsp", &["split.vmdk", "split-s001.vmdk"], &["disk.vmdk", "split-s001.vmdk"])?;
    for d in ["flat.vmdk", "split.vmdk"] {
        let b = m.read(d)?;
        m.seed("vmdk_descriptor", d, &b)?;
    }
    let head = m.read("sparse.vmdk")?;
    let desc_off = u64::from_le_bytes(head[28..36].try_into().unwrap()) as usize * 512;
    let desc: Vec<u8> = head[desc_off..desc_off + 1024].iter().copied().take_while(|&b| b != 0).collect();
    m.seed("vmdk_descriptor", "embedded.txt", &desc)?;
    m.sh("qemu-img convert -q -f raw -O vdi data.raw dyn.vdi && qemu-img create -q -f vdi -o static=on fixed.vdi 2M")?;
    for f in ["dyn", "fixed"] {
        let b = sparse(&m.read(&format!("{}.vdi", f))?);
        m.seed("image_vdi", &format!("{}.vsp", f), &b)?;
    }

    // Chains: VMDK by qemu-img; VHD and VDI differencing by the core library's writer (no tool
    // here makes them); a depth-8 VHD chain; a VHD parent cycle.
    m.sh("qemu-img create -q -f vmdk -b sparse.vmdk -F vmdk child.vmdk")?;
    m.files("image_chain", "vmdk-child.vsp", &["child.vmdk", "sparse.vmdk"], &["leaf.img", "sparse.vmdk"])?;
    let opts = |seed: u64| CreateOptions { size_bytes: 8 << 20, reserve_bytes: 0, exact_size: false, seed, now_unix: 1_700_000_000 };
    let workdir = m.work.clone();
    let w = |n: &str| workdir.join(n).to_string_lossy().into_owned();
    let (base_vhd, mid_vhd, leaf_vhd) = (w("c0.vhd"), w("c1.vhd"), w("c2.vhd"));
    create::create_at(&base_vhd, Variant::VhdDynamic, &opts(1), None).map_err(|e| e.to_string())?;
    create::create_at(&mid_vhd, Variant::VhdDynamic, &opts(2), Some(&base_vhd)).map_err(|e| e.to_string())?;
    create::create_at(&leaf_vhd, Variant::VhdDynamic, &opts(3), Some(&mid_vhd)).map_err(|e| e.to_string())?;
    m.files("image_chain", "vhd-depth3.vsp", &["c2.vhd", "c1.vhd", "c0.vhd"], &["leaf.img", "c1.vhd", "c0.vhd"])?;
    let mut prev = w("d0.vhd");
    create::create_at(&prev, Variant::VhdDynamic, &opts(10), None).map_err(|e| e.to_string())?;
    for i in 1..8 {
        let p = w(&format!("d{}.vhd", i));
        create::create_at(&p, Variant::VhdDynamic, &opts(10 + i), Some(&prev)).map_err(|e| e.to_string())?;
        prev = p;
    }
    let names: Vec<String> = (0..8).rev().map(|i| format!("d{}.vhd", i)).collect();
    let mut files: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut labels = files.clone();
    labels[0] = "leaf.img";
    m.files("image_chain", "vhd-depth8.vsp", &files, &labels)?;
    files.clear();
    let (v0, v1) = (w("v0.vdi"), w("v1.vdi"));
    create::create_at(&v0, Variant::VdiDynamic, &opts(20), None).map_err(|e| e.to_string())?;
    create::create_at(&v1, Variant::VdiDynamic, &opts(21), Some(&v0)).map_err(|e| e.to_string())?;
    m.files("image_chain", "vdi-child.vsp", &["v1.vdi", "v0.vdi"], &["leaf.img", "parents/v0.vdi"])?;
    // A cycle: q is p's child; r is q's child whose Unique Id is then set to p's and which takes
    // p's name. Opening q: its parent "p.vhd" is r (Id p), whose parent "q.vhd" is q again.
    let (p, q, r) = (w("p.vhd"), w("q.vhd"), w("r.vhd"));
    create::create_at(&p, Variant::VhdDynamic, &opts(30), None).map_err(|e| e.to_string())?;
    create::create_at(&q, Variant::VhdDynamic, &opts(31), Some(&p)).map_err(|e| e.to_string())?;
    create::create_at(&r, Variant::VhdDynamic, &opts(32), Some(&q)).map_err(|e| e.to_string())?;
    let p_bytes = m.read("p.vhd")?;
    let mut r_bytes = m.read("r.vhd")?;
    let id = p_bytes[p_bytes.len() - 512 + 68..p_bytes.len() - 512 + 84].to_vec();
    let n = r_bytes.len();
    for at in [0, n - 512] {
        r_bytes[at + 68..at + 84].copy_from_slice(&id);
        let c = vboot::image::vhd::checksum(&r_bytes[at..at + 512], 64);
        r_bytes[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
    }
    std::fs::write(m.p("r.vhd"), &r_bytes).map_err(|e| e.to_string())?;
    m.files("image_chain", "vhd-cycle.vsp", &["q.vhd", "r.vhd"], &["leaf.img", "p.vhd"])?;

    // ISO 9660 / El Torito by xorriso: no emulation, floppy and hard-disk emulation.
    m.sh("mkdir -p iso/boot && head -c 2048 /dev/urandom > iso/boot/noemul.bin && truncate -s 1440K iso/boot/floppy.img \
          && printf 'x' | dd of=iso/boot/floppy.img conv=notrunc status=none && cp mbr.img hd.img && truncate -s 4M hd.img \
          && printf 'label: dos\\n63,8000,6,*\\n' | sfdisk -q hd.img && cp hd.img iso/boot/hd.img")?;
    m.sh("xorriso -as mkisofs -quiet -o noemul.iso -b boot/noemul.bin -no-emul-boot -boot-load-size 4 iso 2>/dev/null \
          && xorriso -as mkisofs -quiet -o floppy.iso -b boot/floppy.img iso 2>/dev/null \
          && xorriso -as mkisofs -quiet -o hd.iso -b boot/hd.img -hard-disk-boot iso 2>/dev/null")?;
    for f in ["noemul", "floppy", "hd"] {
        let b = sparse(&m.read(&format!("{}.iso", f))?);
        m.seed("iso", &format!("{}.vsp", f), &b)?;
    }

    // grub.cfg, the vboot line and the rewrite: the corpus of tests/data/grubcfg.
    let cfgs = root.join("tests/data/grubcfg");
    let mut entries: Vec<_> = std::fs::read_dir(&cfgs)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cfg"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read(e.path()).map_err(|e| e.to_string())?;
        m.seed("grubcfg", &name, &text)?;
        let mut rw = b"0\tsnapshot\t/images/snap.vhd\n".to_vec();
        rw.extend_from_slice(&text);
        m.seed("config_rewrite", &name, &rw)?;
        let mut rw = b"new0\tTom's snapshot\t(hd0,1)/s 1.vhd\n".to_vec();
        rw.extend_from_slice(&text);
        m.seed("config_rewrite", &format!("new-{}", name), &rw)?;
        for (i, line) in String::from_utf8_lossy(&text).lines().filter(|l| l.trim_start().starts_with("vboot")).enumerate().take(6) {
            let words = line.trim_start().strip_prefix("vboot").unwrap_or("").trim();
            m.seed("vboot_line", &format!("{}-{}", name, i), words.as_bytes())?;
        }
    }
    let fixed_lines = [
        "harddisk=(hd0,msdos1)/images/xp.vhd parent_dir=/parents take_snapshot=/snap.vhd new_menu_entry='XP snap' reserve=64M",
        "cdrom=/iso/debian.iso floppy=/f.img floppy_b=/g.img boot=floppy immutable",
        "harddisk=/a.vdi restore pause boot_entry=3 config_file=(hd0,gpt2)/boot/grub/grub.cfg",
        "recover_mbr",
        "harddisk=/vm/x.img immutable immutable_child=(hd0,1)/scratch/x.immutable.vmdk reserve=1G",
    ];
    for (i, l) in fixed_lines.iter().enumerate() {
        m.seed("vboot_line", &format!("line-{}", i), l.as_bytes())?;
    }

    // The hand-off table and a physical memory holding IVT -> safe hook -> table.
    let table = handoff_sample();
    let bytes = table.to_bytes();
    let mut seed = vec![0u8];
    seed.extend_from_slice(&table.table_address.to_le_bytes());
    seed.extend_from_slice(&1_700_000_100u64.to_le_bytes());
    seed.extend_from_slice(&bytes);
    m.seed("handoff", "table", &seed)?;
    seed[0] = 1;
    m.seed("handoff", "table-fixcrc", &seed)?;
    let mut mem = vec![0u8; 0x10_0000];
    let hook_at = table.safe_hook_address as usize;
    mem[0x4C..0x50].copy_from_slice(&((((hook_at >> 4) as u32) << 16) | (hook_at as u32 & 0xF)).to_le_bytes());
    mem[hook_at..hook_at + 3].copy_from_slice(&[0xEB, 0x25, 0x90]);
    mem[hook_at + 3..hook_at + 11].copy_from_slice(&vboot::handoff::HOOK_SIGNATURE);
    mem[hook_at + 11..hook_at + 19].copy_from_slice(&vboot::handoff::HOOK_VENDOR);
    vboot::handoff::SafeHook::fill(&mut mem[hook_at..hook_at + vboot::handoff::HOOK_BYTES], 0xF000_E3FE, table.table_address as u32, table.boot_id);
    let mut physical = b"VSP1".to_vec();
    physical.extend_from_slice(&(1u64 << 31).to_le_bytes());
    for (at, chunk) in [(0u64, &mem[..0x400]), (hook_at as u64, &mem[hook_at..hook_at + 64]), (table.table_address, &bytes[..])] {
        physical.extend_from_slice(&at.to_le_bytes());
        physical.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        physical.extend_from_slice(chunk);
    }
    let mut seed = vec![2u8];
    seed.extend_from_slice(&table.table_address.to_le_bytes());
    seed.extend_from_slice(&1_700_000_100u64.to_le_bytes());
    seed.extend_from_slice(&physical);
    m.seed("handoff", "locate", &seed)?;

    // Install: what vboot-install plans on the MBR and GPT disks, applied; then the disks as
    // they were (nothing installed).
    for f in ["mbr", "gpt"] {
        let path = m.p(&format!("{}.img", f));
        let mut disk = vboot::block::FileDisk::open(&path, true).map_err(|e| e.to_string())?;
        let stage1 = [0x90u8; 512];
        let mut stage2 = vec![0u8; 8 * 512];
        stage2[4..12].copy_from_slice(&vboot::install::STAGE2_MAGIC);
        stage2[12..16].copy_from_slice(&8u32.to_le_bytes());
        let engine = vboot::install::engine_blob(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0]);
        let before = sparse(&m.read(&format!("{}.img", f))?);
        let mut s = vec![0u8];
        s.extend_from_slice(&before);
        m.seed("install", &format!("{}-blank.vsp", f), &s)?;
        let plan = vboot::install::plan_install(&mut disk, &stage1, &stage2, &engine, &Default::default()).map_err(|e| format!("install seed: {}", e))?;
        for wr in &plan.writes {
            use vboot::block::BlockDevice;
            disk.write_sectors(wr.lba, &wr.bytes).map_err(|e| e.to_string())?;
        }
        drop(disk);
        let mut s = vec![1u8];
        s.extend_from_slice(&sparse(&m.read(&format!("{}.img", f))?));
        m.seed("install", &format!("{}-installed.vsp", f), &s)?;
    }

    // ELF: a minimal PIE like the relocator's unit test, and the engine when it was built.
    let mut seed = 0x0010_0000u32.to_le_bytes().to_vec();
    seed.extend_from_slice(&tiny_pie());
    m.seed("elf", "tiny-pie", &seed)?;
    if let Ok(engine) = std::fs::read(root.join("target/vboot/engine.elf")) {
        if engine.len() <= 256 * 1024 {
            let mut seed = 0x7F00_0000u32.to_le_bytes().to_vec();
            seed.extend_from_slice(&engine);
            m.seed("elf", "engine", &seed)?;
        }
    }

    // INT 13h: one call of each function on each kind of drive.
    for (name, input) in int13_seeds() {
        m.seed("int13", &name, &input)?;
    }

    let total: usize = m.made.iter().map(|(_, n)| n).sum();
    println!("fuzz seeds: {} files, {} KiB in fuzz/seeds/", m.made.len(), total / 1024);
    for (n, len) in &m.made {
        if *len > 64 * 1024 {
            println!("  large seed: {} ({} KiB)", n, len / 1024);
        }
    }
    Ok(())
}

fn handoff_sample() -> vboot::handoff::Table {
    use vboot::fs::Extent;
    use vboot::handoff::*;
    Table {
        boot_id: 0x1122_3344_5566_7788,
        boot_time_unix: 1_700_000_000,
        table_address: 0x7F80_0000,
        reserved_base: 0x7F00_0000,
        reserved_length: 0x100_0000,
        safe_hook_address: 0x9F400 + 0x100,
        drives: vec![Drive {
            bios_number: 0x80,
            kind: DriveKind::HardDisk,
            write_mode: WriteMode::Normal,
            virtual_sectors: 131072,
            host: HostDisk { bios_drive: 0x80, scheme: HostScheme::Gpt, mbr_signature: 0, disk_guid: [7; 16], sectors: 1 << 20 },
            partition: HostPartition { number: 2, start_lba: 4096, sectors: 500_000, type_byte: 0, guid: [9; 16] },
            filesystem: Filesystem::Ext,
            overlay: None,
            parent_dir: Some("/parents".to_string()),
            layers: vec![
                Layer {
                    format: LayerFormat::Vhd,
                    size_bytes: 10 * 512 + 100,
                    path: "/images/child.vhd".to_string(),
                    extents: vec![Extent { file_sector: 0, lba: 5000, sectors: 4 }, Extent { file_sector: 4, lba: 9000, sectors: 7 }],
                },
                Layer { format: LayerFormat::Vhd, size_bytes: 2048, path: "/images/base.vhd".to_string(), extents: vec![Extent { file_sector: 0, lba: 20000, sectors: 4 }] },
            ],
        }],
    }
}

/// One PT_LOAD (file offset 0x100 -> vaddr 0), a PT_DYNAMIC at vaddr 0x20 with DT_REL/RELSZ/
/// RELENT, one R_386_RELATIVE patching the word at 0x10.
fn tiny_pie() -> Vec<u8> {
    let mut e = vec![0u8; 0x100 + 0x60];
    e[0..4].copy_from_slice(b"\x7fELF");
    e[4] = 1;
    e[5] = 1;
    e[16..18].copy_from_slice(&3u16.to_le_bytes());
    e[18..20].copy_from_slice(&3u16.to_le_bytes());
    e[28..32].copy_from_slice(&52u32.to_le_bytes());
    e[42..44].copy_from_slice(&32u16.to_le_bytes());
    e[44..46].copy_from_slice(&2u16.to_le_bytes());
    let ph = |e: &mut Vec<u8>, at: usize, kind: u32, off: u32, vaddr: u32, file: u32, mem: u32| {
        for (i, v) in [kind, off, vaddr, vaddr, file, mem, 7, 4].iter().enumerate() {
            e[at + i * 4..at + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
    };
    ph(&mut e, 52, 1, 0x100, 0, 0x60, 0x80);
    ph(&mut e, 84, 2, 0x120, 0x20, 0x20, 0x20);
    let put = |e: &mut Vec<u8>, at: usize, v: u32| e[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut e, 0x110, 0x1234);
    for (i, (tag, val)) in [(17u32, 0x40u32), (18, 8), (19, 8), (0, 0)].iter().enumerate() {
        put(&mut e, 0x120 + i * 8, *tag);
        put(&mut e, 0x124 + i * 8, *val);
    }
    put(&mut e, 0x140, 0x10);
    put(&mut e, 0x144, 8);
    e
}

/// Inputs of the int13 target (layout in fuzz/fuzz_targets/int13.rs): configuration, then calls.
fn int13_seeds() -> Vec<(String, Vec<u8>)> {
    struct Call {
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
        esi: u32,
        ds: u16,
        es: u16,
        packet: [u8; 32],
    }
    fn dap(count: u16, seg: u16, off: u16, lba: u64, flat: u64, long: u32, size: u8) -> [u8; 32] {
        let mut p = [0u8; 32];
        p[0] = size;
        p[2..4].copy_from_slice(&count.to_le_bytes());
        p[4..6].copy_from_slice(&off.to_le_bytes());
        p[6..8].copy_from_slice(&seg.to_le_bytes());
        p[8..16].copy_from_slice(&lba.to_le_bytes());
        p[16..24].copy_from_slice(&flat.to_le_bytes());
        p[24..28].copy_from_slice(&long.to_le_bytes());
        p
    }
    let hdd_calls = vec![
        Call { eax: 0x0201, ebx: 0, ecx: 0x0001, edx: 0x0080, esi: 0, ds: 0, es: 0x1000, packet: [0; 32] },
        Call { eax: 0x0304, ebx: 0x200, ecx: 0x0102, edx: 0x0180, esi: 0, ds: 0, es: 0x1000, packet: [0; 32] },
        Call { eax: 0x0800, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0, es: 0, packet: [0; 32] },
        Call { eax: 0x1500, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0, es: 0, packet: [0; 32] },
        Call { eax: 0x4100, ebx: 0x55AA, ecx: 0, edx: 0x80, esi: 0, ds: 0, es: 0, packet: [0; 32] },
        Call { eax: 0x4200, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0x700, es: 0, packet: dap(8, 0x2000, 0, 3, 0, 0, 0x10) },
        Call { eax: 0x4200, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0x700, es: 0, packet: dap(4, 0xFFFF, 0xFFFF, 1, 0x18_0000, 0, 0x18) },
        Call { eax: 0x4300, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0x700, es: 0, packet: dap(0xFF, 0, 0, 2, 0x20_0000, 300, 0x20) },
    ];
    let tail_calls = vec![
        Call { eax: 0x4400, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0x700, es: 0, packet: dap(2, 0x2000, 0, 5, 0, 0, 0x10) },
        Call { eax: 0x4700, ebx: 0, ecx: 0, edx: 0x80, esi: 0, ds: 0x700, es: 0, packet: dap(0, 0, 0, 5, 0, 0, 0x10) },
        Call { eax: 0x4800, ebx: 0, ecx: 0, edx: 0x80, esi: 0x10, ds: 0x700, es: 0, packet: { let mut p = [0u8; 32]; p[0] = 0x1E; p } },
        Call { eax: 0x4B01, ebx: 0, ecx: 0, edx: 0x7F, esi: 0, ds: 0x700, es: 0, packet: [0; 32] },
        Call { eax: 0x0000, ebx: 0, ecx: 0, edx: 0x81, esi: 0, ds: 0, es: 0, packet: [0; 32] },
    ];
    let floppy_calls = vec![
        Call { eax: 0x0212, ebx: 0, ecx: 0x0001, edx: 0x0000, esi: 0, ds: 0, es: 0x1000, packet: [0; 32] },
        Call { eax: 0x0512, ebx: 0, ecx: 0x0101, edx: 0x0100, esi: 0, ds: 0, es: 0x1000, packet: [0; 32] },
        Call { eax: 0x0800, ebx: 0, ecx: 0, edx: 0, esi: 0, ds: 0, es: 0, packet: [0; 32] },
        Call { eax: 0x1800, ebx: 0, ecx: 0x4F12, edx: 0, esi: 0, ds: 0, es: 0, packet: [0; 32] },
    ];
    let cd_calls = vec![
        Call { eax: 0x4200, ebx: 0, ecx: 0, edx: 0xE0, esi: 0, ds: 0x700, es: 0, packet: dap(2, 0x2000, 0, 16, 0, 0, 0x10) },
        Call { eax: 0x4B01, ebx: 0, ecx: 0, edx: 0xE0, esi: 0, ds: 0x700, es: 0, packet: [0; 32] },
        Call { eax: 0x4800, ebx: 0, ecx: 0, edx: 0xE0, esi: 0x10, ds: 0x700, es: 0, packet: { let mut p = [0u8; 32]; p[0] = 0x42; p } },
    ];
    let encode = |config: u8, sectors: u64, geometry: Option<(u32, u16, u16)>, calls: &[Call]| {
        let mut v = vec![config];
        v.extend_from_slice(&sectors.to_le_bytes());
        if let Some((c, h, s)) = geometry {
            v.extend_from_slice(&c.to_le_bytes());
            v.extend_from_slice(&h.to_le_bytes());
            v.extend_from_slice(&s.to_le_bytes());
        }
        if config & 3 >= 2 {
            v.extend_from_slice(&20u32.to_le_bytes());
        }
        // Three pieces.
        v.push(2);
        v.extend_from_slice(&1000u32.to_le_bytes());
        v.push(7);
        v.extend_from_slice(&333u32.to_le_bytes());
        v.push(3);
        v.push(9);
        let mut s0 = [0u8; 512];
        s0[446 + 4] = 0x0C;
        s0[446 + 8..446 + 12].copy_from_slice(&63u32.to_le_bytes());
        s0[446 + 12..446 + 16].copy_from_slice(&40_000u32.to_le_bytes());
        s0[510] = 0x55;
        s0[511] = 0xAA;
        v.extend_from_slice(&s0);
        for c in calls {
            for r in [c.eax, c.ebx, c.ecx, c.edx, c.esi, 0] {
                v.extend_from_slice(&r.to_le_bytes());
            }
            v.extend_from_slice(&c.ds.to_le_bytes());
            v.extend_from_slice(&c.es.to_le_bytes());
            v.extend_from_slice(&0x0202u16.to_le_bytes());
            v.push(0x80); // DL as given
            v.extend_from_slice(&c.packet);
        }
        v
    };
    vec![
        ("hdd".to_string(), encode(0, 100_000, None, &hdd_calls)),
        ("hdd-tail".to_string(), encode(0, 100_000, None, &tail_calls)),
        ("hdd-geometry-ro".to_string(), encode(4 | 8 | 16, 20 * 16 * 63 + 5, Some((20, 16, 63)), &hdd_calls)),
        ("hdd-huge".to_string(), encode(0, 1 << 34, None, &hdd_calls)),
        ("floppy".to_string(), encode(1, 2880, None, &floppy_calls)),
        ("floppy-emulated".to_string(), encode(1 | 32, 2880, None, &tail_calls)),
        ("cdrom".to_string(), encode(2, 4000, None, &cd_calls)),
    ]
}
