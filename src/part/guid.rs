//! GUIDs as GPT stores them: the partition type GUIDs vboot names, and the text form.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// A GUID in its on-disk byte order from the text form's fields (the first three fields are stored
/// little-endian, the last eight bytes as written).
pub const fn guid_from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// 21686148-6449-6E6F-744E-656564454649: where a BIOS boot loader keeps its second stage on GPT.
pub const GPT_TYPE_BIOS_BOOT: [u8; 16] = guid_from_fields(
    0x2168_6148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B
pub const GPT_TYPE_EFI_SYSTEM: [u8; 16] = guid_from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// EBD0A0A2-B9E5-4433-87C0-68B6B72699C7: FAT, NTFS and exFAT volumes made by Windows and most tools.
pub const GPT_TYPE_MICROSOFT_BASIC_DATA: [u8; 16] = guid_from_fields(
    0xEBD0_A0A2,
    0xB9E5,
    0x4433,
    [0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7],
);
/// 0FC63DAF-8483-4772-8E79-3D69D8477DE4
pub const GPT_TYPE_LINUX_FILESYSTEM: [u8; 16] = guid_from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

pub(super) const GPT_TYPE_NAMES: &[([u8; 16], &str)] = &[
    (GPT_TYPE_EFI_SYSTEM, "EFI System"),
    (GPT_TYPE_BIOS_BOOT, "BIOS boot"),
    (GPT_TYPE_MICROSOFT_BASIC_DATA, "Microsoft basic data"),
    (GPT_TYPE_LINUX_FILESYSTEM, "Linux"),
    (
        guid_from_fields(
            0xE3C9_E316,
            0x0B5C,
            0x4DB8,
            [0x81, 0x7D, 0xF9, 0x2D, 0xF0, 0x02, 0x15, 0xAE],
        ),
        "Microsoft reserved",
    ),
    (
        guid_from_fields(
            0xDE94_BBA4,
            0x06D1,
            0x4D40,
            [0xA1, 0x6A, 0xBF, 0xD5, 0x01, 0x79, 0xD6, 0xAC],
        ),
        "Windows recovery",
    ),
    (
        guid_from_fields(
            0x0657_FD6D,
            0xA4AB,
            0x43C4,
            [0x84, 0xE5, 0x09, 0x33, 0xC8, 0x4B, 0x4F, 0x4F],
        ),
        "Linux swap",
    ),
    (
        guid_from_fields(
            0xE6D6_D379,
            0xF507,
            0x44C2,
            [0xA2, 0x3C, 0x23, 0x8F, 0x2A, 0x3D, 0xF9, 0x28],
        ),
        "Linux LVM",
    ),
    (
        guid_from_fields(
            0xA19D_880F,
            0x05FC,
            0x4D3B,
            [0xA0, 0x06, 0x74, 0x3F, 0x0F, 0x84, 0x91, 0x1E],
        ),
        "Linux RAID",
    ),
    (
        guid_from_fields(
            0x4F68_BCE3,
            0xE8CD,
            0x4DB1,
            [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
        ),
        "Linux root (x86-64)",
    ),
    (
        guid_from_fields(
            0x933A_C7E1,
            0x2EB4,
            0x4F13,
            [0xB8, 0x44, 0x0E, 0x14, 0xE2, 0xAE, 0xF9, 0x15],
        ),
        "Linux home",
    ),
    (
        guid_from_fields(
            0x4846_5300,
            0x0000,
            0x11AA,
            [0xAA, 0x11, 0x00, 0x30, 0x65, 0x43, 0xEC, 0xAC],
        ),
        "Apple HFS+",
    ),
];

/// The usual text form of a GUID, upper case: `21686148-6449-6E6F-744E-656564454649`.
pub fn format_guid(g: &[u8; 16]) -> String {
    format!("{}", GuidText(g))
}

/// Displays a GUID in its text form without allocating.
pub struct GuidText<'a>(pub &'a [u8; 16]);

impl fmt::Display for GuidText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9]
        )?;
        for b in &g[10..16] {
            write!(f, "{:02X}", b)?;
        }
        Ok(())
    }
}

/// Parse the text form of a GUID (either case, with the four dashes) to on-disk bytes.
pub fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let t = text.as_bytes();
    if t.len() != 36 || t[8] != b'-' || t[13] != b'-' || t[18] != b'-' || t[23] != b'-' {
        return None;
    }
    let hex: Vec<u8> = t.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut text_order = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = core::str::from_utf8(pair).ok()?;
        text_order[i] = u8::from_str_radix(s, 16).ok()?;
    }
    let t = text_order;
    Some([
        t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
        t[14], t[15],
    ])
}

