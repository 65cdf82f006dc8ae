//! vboot.lkrn: vboot as a "Linux kernel" that other boot loaders start (GRUB's `linux16`,
//! SYSLINUX's `LINUX`, iPXE's `chain`), through the Linux/x86 boot protocol
//! (Documentation/x86/boot.rst in the Linux source). docs/boot-layout.md has the layout and the
//! sequence; this module has what is pure about it: the protocol's setup header, the file's
//! assembly from its three pieces, and the command line.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;

use crate::config::{Config, DefaultChoice, GrubPath};
use crate::install::Stage2Header;

/// The setup header as the boot protocol lays it out from file offset 0x1F1, up to protocol
/// 2.06's last field. Little-endian; `packed` because the protocol places fields unaligned.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupHeader {
    /// Sectors of real-mode setup code after the boot sector.
    pub setup_sects: u8,
    pub root_flags: u16,
    /// The protected-mode part, in 16-byte units.
    pub syssize: u32,
    pub ram_size: u16,
    pub vid_mode: u16,
    pub root_dev: u16,
    /// 0xAA55.
    pub boot_flag: u16,
    /// A short jump at 0x200 over the header to the setup code: the loader enters there.
    pub jump: [u8; 2],
    /// "HdrS".
    pub header: [u8; 4],
    pub version: u16,
    pub realmode_swtch: u32,
    pub start_sys_seg: u16,
    pub kernel_version: u16,
    /// Written by the loader.
    pub type_of_loader: u8,
    /// Bit 0 LOADED_HIGH: the protected-mode part goes to 0x100000. Bit 7 CAN_USE_HEAP (loader).
    pub loadflags: u8,
    pub setup_move_size: u16,
    /// Where the protected-mode part is loaded (informational for a 16-bit entry like ours).
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub bootsect_kludge: u32,
    /// Written by the loader: the end of the setup heap, an offset from the setup segment.
    pub heap_end_ptr: u16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    /// Written by the loader (2.02+): the linear address of the NUL-terminated command line.
    pub cmd_line_ptr: u32,
    /// 2.03+: the highest address an initrd may end at (vboot takes none).
    pub initrd_addr_max: u32,
    /// 2.05+.
    pub kernel_alignment: u32,
    /// 2.05+: 0, vboot must be at 0x100000.
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: u16,
    /// 2.06+: the longest command line taken, without its NUL: loaders cut longer ones.
    pub cmdline_size: u32,
}

/// Where the setup header starts in the file.
pub const SETUP_HEADER_OFFSET: usize = 0x1F1;

// The protocol's offsets (file offset minus 0x1F1), typed once here.
const_assert_eq!(offset_of!(SetupHeader, setup_sects), 0x1F1 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, syssize), 0x1F4 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, boot_flag), 0x1FE - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, jump), 0x200 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, header), 0x202 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, version), 0x206 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, type_of_loader), 0x210 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, loadflags), 0x211 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, code32_start), 0x214 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, heap_end_ptr), 0x224 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, cmd_line_ptr), 0x228 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, initrd_addr_max), 0x22C - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, relocatable_kernel), 0x234 - 0x1F1);
const_assert_eq!(offset_of!(SetupHeader, cmdline_size), 0x238 - 0x1F1);
const_assert_eq!(size_of::<SetupHeader>(), 0x23C - 0x1F1);

/// Protocol 2.06: the first with `cmdline_size`, so a loader cuts the command line to what the
/// setup code keeps ([`COMMAND_LINE_MAX`]); cmd_line_ptr (2.02) and LOADED_HIGH come with it.
/// Nothing of a later version is needed.
pub const PROTOCOL_VERSION: u16 = 0x0206;
pub const HDRS: [u8; 4] = *b"HdrS";
pub const LOADED_HIGH: u8 = 0x01;
/// Where the loader puts the protected-mode part (LOADED_HIGH).
pub const PROTECTED_MODE_BASE: u32 = 0x10_0000;
/// GRUB refuses setup code of more sectors (GRUB_LINUX_MAX_SETUP_SECTS).
pub const SETUP_SECTS_MAX: usize = 64;

/// Where the setup code leaves the command line for stage2 (between stage1's old place and
/// stage2's low part, both unused when vboot.lkrn runs), NUL-terminated.
pub const COMMAND_LINE_ADDR: u32 = 0x7E00;
/// The command line's bytes kept, without the NUL.
pub const COMMAND_LINE_MAX: usize = 511;

/// In stage2's header (src/install.rs [`Stage2Header`], entry.s), the u32 that vboot.lkrn's
/// setup code sets to the bytes it left at [`PROTECTED_MODE_BASE`] (stage2's high part, then
/// engine.bin): 0 in stage2.bin, as stage1 starts it.
pub const STAGE2_PRELOADED_OFFSET: usize = 36;

impl SetupHeader {
    /// The header's bytes, as they go at [`SETUP_HEADER_OFFSET`].
    pub fn to_bytes(&self) -> [u8; size_of::<SetupHeader>()] {
        let mut b = [0u8; size_of::<SetupHeader>()];
        let h = *self;
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(SetupHeader, setup_sects), &[h.setup_sects]);
        put(offset_of!(SetupHeader, root_flags), &{ h.root_flags }.to_le_bytes());
        put(offset_of!(SetupHeader, syssize), &{ h.syssize }.to_le_bytes());
        put(offset_of!(SetupHeader, ram_size), &{ h.ram_size }.to_le_bytes());
        put(offset_of!(SetupHeader, vid_mode), &{ h.vid_mode }.to_le_bytes());
        put(offset_of!(SetupHeader, root_dev), &{ h.root_dev }.to_le_bytes());
        put(offset_of!(SetupHeader, boot_flag), &{ h.boot_flag }.to_le_bytes());
        put(offset_of!(SetupHeader, jump), &h.jump);
        put(offset_of!(SetupHeader, header), &h.header);
        put(offset_of!(SetupHeader, version), &{ h.version }.to_le_bytes());
        put(offset_of!(SetupHeader, realmode_swtch), &{ h.realmode_swtch }.to_le_bytes());
        put(offset_of!(SetupHeader, start_sys_seg), &{ h.start_sys_seg }.to_le_bytes());
        put(offset_of!(SetupHeader, kernel_version), &{ h.kernel_version }.to_le_bytes());
        put(offset_of!(SetupHeader, type_of_loader), &[h.type_of_loader]);
        put(offset_of!(SetupHeader, loadflags), &[h.loadflags]);
        put(offset_of!(SetupHeader, setup_move_size), &{ h.setup_move_size }.to_le_bytes());
        put(offset_of!(SetupHeader, code32_start), &{ h.code32_start }.to_le_bytes());
        put(offset_of!(SetupHeader, ramdisk_image), &{ h.ramdisk_image }.to_le_bytes());
        put(offset_of!(SetupHeader, ramdisk_size), &{ h.ramdisk_size }.to_le_bytes());
        put(offset_of!(SetupHeader, bootsect_kludge), &{ h.bootsect_kludge }.to_le_bytes());
        put(offset_of!(SetupHeader, heap_end_ptr), &{ h.heap_end_ptr }.to_le_bytes());
        put(offset_of!(SetupHeader, ext_loader_ver), &[h.ext_loader_ver]);
        put(offset_of!(SetupHeader, ext_loader_type), &[h.ext_loader_type]);
        put(offset_of!(SetupHeader, cmd_line_ptr), &{ h.cmd_line_ptr }.to_le_bytes());
        put(offset_of!(SetupHeader, initrd_addr_max), &{ h.initrd_addr_max }.to_le_bytes());
        put(offset_of!(SetupHeader, kernel_alignment), &{ h.kernel_alignment }.to_le_bytes());
        put(offset_of!(SetupHeader, relocatable_kernel), &[h.relocatable_kernel]);
        put(offset_of!(SetupHeader, min_alignment), &[h.min_alignment]);
        put(offset_of!(SetupHeader, xloadflags), &{ h.xloadflags }.to_le_bytes());
        put(offset_of!(SetupHeader, cmdline_size), &{ h.cmdline_size }.to_le_bytes());
        b
    }
}

/// Where the pieces lie in a built vboot.lkrn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LkrnLayout {
    /// The real-mode part: the boot sector, the setup code, stage2's low part.
    pub setup_bytes: usize,
    /// The protected-mode part: stage2's high part, then engine.bin.
    pub protected_bytes: usize,
    pub high_bytes: usize,
    pub engine_bytes: usize,
}

/// vboot.lkrn from its pieces: `setup` (the assembled setup code, stage2/lkrn/setup.s: a boot
/// sector with the header's place at 0x1F1 and the jump at 0x200, then the code, whole
/// sectors), `stage2` (stage2.bin: its low part goes right after the setup code, its high part
/// starts the protected-mode part) and `engine` (engine.bin, after the high part).
pub fn build(setup: &[u8], stage2: &[u8], engine: &[u8]) -> Result<(Vec<u8>, LkrnLayout), String> {
    if setup.len() < 1024 || setup.len() % 512 != 0 {
        return Err(format!("the setup code is {} bytes; it must be whole sectors, the header's and more", setup.len()));
    }
    let jump = &setup[SETUP_HEADER_OFFSET + offset_of!(SetupHeader, jump)..][..2];
    if jump[0] != 0xEB || 0x202 + (jump[1] as usize) < SETUP_HEADER_OFFSET + size_of::<SetupHeader>() {
        return Err(String::from("the setup code has no short jump at 0x200 over the setup header"));
    }
    if setup[SETUP_HEADER_OFFSET..0x200].iter().any(|&b| b != 0) {
        return Err(String::from("the setup code has bytes where the setup header goes (0x1F1..0x200)"));
    }
    let header = Stage2Header::parse(stage2).ok_or("stage2.bin has no VBOOTST2 header")?;
    if stage2.len() % 512 != 0 || header.sectors as usize * 512 != stage2.len() {
        return Err(format!("stage2.bin is {} bytes, its header says {} sectors", stage2.len(), header.sectors));
    }
    // The field the setup code writes must be there, unused: the entry jump goes past it.
    let field = STAGE2_PRELOADED_OFFSET..STAGE2_PRELOADED_OFFSET + 4;
    if stage2[0] != 0xEB || 2 + (stage2[1] as usize) < field.end || stage2[field].iter().any(|&b| b != 0) {
        return Err(String::from("stage2.bin's header has no preloaded-bytes field at offset 36"));
    }
    crate::install::engine_blob_header(engine.get(..512).and_then(|s| s.try_into().ok()).ok_or("engine.bin is too short")?)
        .ok_or("engine.bin has no engine blob header")?;
    if engine.len() % 512 != 0 {
        return Err(format!("engine.bin is {} bytes, not whole sectors", engine.len()));
    }
    let low_bytes = header.load_sectors as usize * 512;
    let setup_bytes = setup.len() + low_bytes;
    let setup_sects = setup_bytes / 512 - 1;
    if setup_sects > SETUP_SECTS_MAX {
        return Err(format!("the real-mode part is {} sectors after the boot sector; GRUB takes at most {}", setup_sects, SETUP_SECTS_MAX));
    }
    let high = &stage2[low_bytes..];
    let protected_bytes = high.len() + engine.len();
    let syssize = u32::try_from(protected_bytes / 16).map_err(|_| "the protected-mode part is too big")?;
    let h = SetupHeader {
        setup_sects: setup_sects as u8,
        syssize,
        boot_flag: 0xAA55,
        jump: [jump[0], jump[1]],
        header: HDRS,
        version: PROTOCOL_VERSION,
        start_sys_seg: 0x1000,
        loadflags: LOADED_HIGH,
        code32_start: PROTECTED_MODE_BASE,
        initrd_addr_max: 0x37FF_FFFF,
        cmdline_size: COMMAND_LINE_MAX as u32,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(setup_bytes + protected_bytes);
    out.extend_from_slice(setup);
    out[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size_of::<SetupHeader>()].copy_from_slice(&h.to_bytes());
    out.extend_from_slice(&stage2[..low_bytes]);
    out.extend_from_slice(high);
    out.extend_from_slice(engine);
    Ok((out, LkrnLayout { setup_bytes, protected_bytes, high_bytes: high.len(), engine_bytes: engine.len() }))
}

/// What vboot.lkrn's command line says (docs/usage.md, "Started by another boot loader").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandLine {
    /// `config=`: the grub.cfg to read; `None`: look on every BIOS hard disk.
    pub config: Option<GrubPath>,
    /// `entry=` or `default=`: the entry to boot at once, as grub.cfg's `set default=` takes it.
    pub entry: Option<String>,
    /// Words vboot does not know (loaders add some: BOOT_IMAGE=, initrd=): shown, then ignored.
    pub ignored: Vec<String>,
    /// Words vboot knows but cannot take as written, with why.
    pub errors: Vec<String>,
}

impl CommandLine {
    pub fn parse(text: &str) -> CommandLine {
        let mut cl = CommandLine::default();
        for word in text.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "config" => match GrubPath::parse_file(value) {
                    Ok(p) if p.disk.is_some() && p.partition.is_none() => {
                        cl.errors.push(format!("config={}: name a partition, as in (hd0,1)/boot/grub/grub.cfg", value))
                    }
                    Ok(p) => cl.config = Some(p),
                    Err(e) => cl.errors.push(format!("config={}: {}", value, e.message)),
                },
                "entry" | "default" if !value.is_empty() => cl.entry = Some(value.to_string()),
                _ => cl.ignored.push(word.to_string()),
            }
        }
        cl
    }

    /// The BIOS drive `config=` names (hd0 is 80h), if it names one.
    pub fn config_drive(&self) -> Option<u8> {
        let d = self.config.as_ref()?.disk?;
        u8::try_from(d).ok().filter(|&d| d < 0x80).map(|d| 0x80 + d)
    }

    /// `entry=`: that entry becomes the default and boots without the menu's wait.
    pub fn apply(&self, config: &mut Config) {
        if let Some(e) = &self.entry {
            config.default = DefaultChoice::from_value(e);
            config.timeout_secs = Some(0);
        }
    }
}

/// The command line as the setup code saved it: up to the first NUL, at most
/// [`COMMAND_LINE_MAX`] bytes, non-UTF-8 bytes replaced.
pub fn command_line_text(saved: &[u8]) -> String {
    let saved = &saved[..saved.len().min(COMMAND_LINE_MAX)];
    let end = saved.iter().position(|&b| b == 0).unwrap_or(saved.len());
    String::from_utf8_lossy(&saved[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_code() -> Vec<u8> {
        let mut s = alloc::vec![0u8; 1024];
        s[0x200] = 0xEB;
        s[0x201] = 0x40;
        s[0x242] = 0xFA;
        s
    }

    fn stage2(low: u32, total: u32) -> Vec<u8> {
        let mut s = alloc::vec![0u8; total as usize * 512];
        s[0] = 0xEB;
        s[1] = 0x40;
        s[4..12].copy_from_slice(&crate::install::STAGE2_MAGIC);
        s[12..16].copy_from_slice(&total.to_le_bytes());
        s[32..36].copy_from_slice(&low.to_le_bytes());
        for (i, b) in s.iter_mut().enumerate().skip(low as usize * 512) {
            *b = (i / 512) as u8;
        }
        s
    }

    #[test]
    fn build_lays_out_setup_low_high_engine_and_fills_the_header() {
        let engine = crate::install::engine_blob(&[7u8; 1000]);
        let s2 = stage2(4, 10);
        let (file, layout) = build(&setup_code(), &s2, &engine).unwrap();
        assert_eq!(layout.setup_bytes, 1024 + 4 * 512);
        assert_eq!(layout.high_bytes, 6 * 512);
        assert_eq!(layout.protected_bytes, 6 * 512 + engine.len());
        assert_eq!(file.len(), layout.setup_bytes + layout.protected_bytes);
        let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        assert_eq!(file[0x1F1], 5, "setup_sects");
        assert_eq!(u32_at(0x1F4) as usize * 16, layout.protected_bytes, "syssize");
        assert_eq!(&file[0x202..0x206], b"HdrS");
        assert_eq!(&file[0x1FE..0x200], &[0x55, 0xAA]);
        assert_eq!(u16::from_le_bytes([file[0x206], file[0x207]]), PROTOCOL_VERSION);
        assert_eq!(file[0x211] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(u32_at(0x214), 0x100000, "code32_start");
        assert_eq!(u32_at(0x238), 511, "cmdline_size");
        assert_eq!(&file[0x200..0x202], &[0xEB, 0x40], "the setup code's jump is kept");
        assert_eq!(file[0x242], 0xFA, "the setup code is kept");
        // What a loader computes: the setup part, then the rest at 1 MiB.
        let real = (file[0x1F1] as usize + 1) * 512;
        assert_eq!(&file[1024..real], &s2[..4 * 512]);
        assert_eq!(&file[real..real + 6 * 512], &s2[4 * 512..]);
        assert_eq!(&file[real + 6 * 512..], &engine[..]);
    }

    #[test]
    fn build_refuses_pieces_that_do_not_fit_together() {
        let engine = crate::install::engine_blob(&[7u8; 1000]);
        let mut no_jump = setup_code();
        no_jump[0x200] = 0x90;
        assert!(build(&no_jump, &stage2(4, 10), &engine).is_err());
        assert!(build(&setup_code()[..1000], &stage2(4, 10), &engine).is_err());
        let mut used = stage2(4, 10);
        used[36] = 1;
        assert!(build(&setup_code(), &used, &engine).unwrap_err().contains("offset 36"));
        assert!(build(&setup_code(), &stage2(4, 10), &[0u8; 512]).unwrap_err().contains("engine"));
        let big = stage2(64, 70);
        assert!(build(&setup_code(), &big, &engine).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn command_line_takes_config_and_entry_and_lists_the_rest() {
        let cl = CommandLine::parse("BOOT_IMAGE=/boot/vboot.lkrn config=(hd0,1)/boot/grub/grub.cfg  entry=2 quiet");
        let c = cl.config.clone().unwrap();
        assert_eq!((c.disk, c.partition.map(|p| p.number), c.path.as_str()), (Some(0), Some(1), "/boot/grub/grub.cfg"));
        assert_eq!(cl.config_drive(), Some(0x80));
        assert_eq!(cl.entry.as_deref(), Some("2"));
        assert_eq!(cl.ignored, ["BOOT_IMAGE=/boot/vboot.lkrn", "quiet"]);
        assert!(cl.errors.is_empty());
        assert_eq!(CommandLine::parse("config=(hd1,msdos2)/vboot.cfg").config_drive(), Some(0x81));
        let any_disk = CommandLine::parse("default=second");
        assert_eq!(any_disk.config, None);
        assert_eq!(any_disk.config_drive(), None);
        assert_eq!(any_disk.entry.as_deref(), Some("second"));
        assert_eq!(CommandLine::parse("").config, None);
        assert_eq!(CommandLine::parse("config=/grub.cfg").config.unwrap().disk, None);
    }

    #[test]
    fn command_line_refuses_a_config_that_names_no_file_or_no_partition() {
        for bad in ["config=(hd0)/grub.cfg", "config=grub.cfg", "config=(hd0,1)/boot/", "config=(hd0,1"] {
            let cl = CommandLine::parse(bad);
            assert_eq!(cl.config, None, "{}", bad);
            assert_eq!(cl.errors.len(), 1, "{}", bad);
            assert!(cl.errors[0].starts_with(bad), "{:?}", cl.errors);
        }
    }

    #[test]
    fn entry_makes_that_entry_the_default_with_no_wait() {
        let mut config = Config::parse("set timeout=-1\nmenuentry a { vboot harddisk=/a.img }\nmenuentry b { vboot harddisk=/b.img }\n").unwrap();
        CommandLine::parse("quiet").apply(&mut config);
        assert_eq!(config.timeout_secs, Some(-1));
        CommandLine::parse("entry=1").apply(&mut config);
        assert_eq!((config.default.clone(), config.timeout_secs), (DefaultChoice::Index(1), Some(0)));
    }

    #[test]
    fn saved_command_line_ends_at_nul_and_at_its_limit() {
        assert_eq!(command_line_text(b"config=(hd0,1)/g.cfg\0garbage"), "config=(hd0,1)/g.cfg");
        assert_eq!(command_line_text(&[b'x'; 600]).len(), COMMAND_LINE_MAX);
        assert_eq!(command_line_text(&[0xFF, b'a', 0]), "\u{FFFD}a");
    }
}
