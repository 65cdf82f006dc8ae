//! Loading the resident engine: a static position-independent ELF32 (i386) executable linked at
//! 0, copied to wherever stage2 found room and fixed up with its R_386_RELATIVE relocations.
//! Position independence (rather than segment bases) lets the engine address guest memory,
//! its own data and the BIOS data area with the same flat pointers.

use alloc::format;
use alloc::string::String;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u32 = 0;
const DT_REL: u32 = 17;
const DT_RELSZ: u32 = 18;
const DT_RELENT: u32 = 19;
const DT_RELA: u32 = 7;
const R_386_NONE: u32 = 0;
const R_386_RELATIVE: u32 = 8;

fn le16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| format!("ELF truncated at {:#x}", at))
}
fn le32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("ELF truncated at {:#x}", at))
}

struct Segment {
    kind: u32,
    file_offset: u32,
    vaddr: u32,
    file_bytes: u32,
    mem_bytes: u32,
}

fn segments(elf: &[u8]) -> Result<alloc::vec::Vec<Segment>, String> {
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&1) || elf.get(5) != Some(&1) {
        return Err(String::from("not a little-endian ELF32 file"));
    }
    if le16(elf, 18)? != 3 {
        return Err(String::from("not an i386 ELF file"));
    }
    let phoff = le32(elf, 28)? as usize;
    let phentsize = le16(elf, 42)? as usize;
    let phnum = le16(elf, 44)? as usize;
    if phentsize < 32 {
        return Err(String::from("ELF program header entries too small"));
    }
    let mut v = alloc::vec::Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        v.push(Segment {
            kind: le32(elf, at)?,
            file_offset: le32(elf, at + 4)?,
            vaddr: le32(elf, at + 8)?,
            file_bytes: le32(elf, at + 16)?,
            mem_bytes: le32(elf, at + 20)?,
        });
    }
    Ok(v)
}

/// Bytes of memory the loaded image spans (from address 0 to the end of the last segment).
pub fn image_bytes(elf: &[u8]) -> Result<u32, String> {
    let mut end = 0u32;
    for s in segments(elf)?.iter().filter(|s| s.kind == PT_LOAD) {
        end = end.max(s.vaddr.checked_add(s.mem_bytes).ok_or("ELF segment wraps")?);
    }
    if end == 0 {
        return Err(String::from("ELF has no loadable segment"));
    }
    Ok(end)
}

/// Copy the image into `dest` (which will live at address `base`) and apply its relocations.
pub fn load_relocated(elf: &[u8], dest: &mut [u8], base: u32) -> Result<(), String> {
    let segs = segments(elf)?;
    dest.fill(0);
    for s in segs.iter().filter(|s| s.kind == PT_LOAD) {
        let src = elf
            .get(s.file_offset as usize..(s.file_offset as usize).saturating_add(s.file_bytes as usize))
            .ok_or("ELF segment outside the file")?;
        let to = dest
            .get_mut(s.vaddr as usize..s.vaddr as usize + s.file_bytes as usize)
            .ok_or("ELF segment outside the destination")?;
        to.copy_from_slice(src);
    }
    let Some(dynamic) = segs.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(());
    };
    let (mut rel, mut relsz, mut relent) = (None, 0u32, 8u32);
    let mut at = dynamic.vaddr as usize;
    let end = at + dynamic.mem_bytes as usize;
    while at + 8 <= end {
        let tag = le32(dest, at)?;
        let val = le32(dest, at + 4)?;
        match tag {
            DT_NULL => break,
            DT_REL => rel = Some(val),
            DT_RELSZ => relsz = val,
            DT_RELENT => relent = val,
            DT_RELA => return Err(String::from("RELA relocations are not expected in an i386 image")),
            _ => {}
        }
        at += 8;
    }
    let Some(rel) = rel else { return Ok(()) };
    if relent < 8 {
        return Err(String::from("bad DT_RELENT"));
    }
    for i in 0..relsz / relent {
        let r = (rel + i * relent) as usize;
        let offset = le32(dest, r)? as usize;
        let kind = le32(dest, r + 4)? & 0xFF;
        match kind {
            R_386_NONE => {}
            R_386_RELATIVE => {
                let v = le32(dest, offset)?.wrapping_add(base);
                dest.get_mut(offset..offset + 4).ok_or("relocation outside the image")?.copy_from_slice(&v.to_le_bytes());
            }
            other => return Err(format!("unsupported relocation type {} at {:#x}", other, offset)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A minimal PIE: one PT_LOAD (file offset 0x100 -> vaddr 0), a PT_DYNAMIC at vaddr 0x20,
    /// one R_386_RELATIVE at vaddr 0x40 patching the word at 0x10.
    fn tiny_pie() -> alloc::vec::Vec<u8> {
        let mut e = vec![0u8; 0x100 + 0x60];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 1;
        e[5] = 1;
        e[18] = 3;
        e[28..32].copy_from_slice(&52u32.to_le_bytes());
        e[42..44].copy_from_slice(&32u16.to_le_bytes());
        e[44..46].copy_from_slice(&2u16.to_le_bytes());
        let ph = |e: &mut alloc::vec::Vec<u8>, at: usize, kind: u32, off: u32, vaddr: u32, filesz: u32, memsz: u32| {
            e[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            e[at + 4..at + 8].copy_from_slice(&off.to_le_bytes());
            e[at + 8..at + 12].copy_from_slice(&vaddr.to_le_bytes());
            e[at + 16..at + 20].copy_from_slice(&filesz.to_le_bytes());
            e[at + 20..at + 24].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(&mut e, 52, PT_LOAD, 0x100, 0, 0x60, 0x80);
        ph(&mut e, 84, PT_DYNAMIC, 0x120, 0x20, 0x20, 0x20);
        let d = 0x100;
        e[d + 0x10..d + 0x14].copy_from_slice(&0x44u32.to_le_bytes());
        for (i, (t, v)) in [(DT_REL, 0x40u32), (DT_RELSZ, 8), (DT_RELENT, 8), (DT_NULL, 0)].iter().enumerate() {
            e[d + 0x20 + i * 8..d + 0x24 + i * 8].copy_from_slice(&t.to_le_bytes());
            e[d + 0x24 + i * 8..d + 0x28 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        e[d + 0x40..d + 0x44].copy_from_slice(&0x10u32.to_le_bytes());
        e[d + 0x44..d + 0x48].copy_from_slice(&R_386_RELATIVE.to_le_bytes());
        e
    }

    #[test]
    fn relocates_relative_entries_and_zeroes_bss() {
        let elf = tiny_pie();
        assert_eq!(image_bytes(&elf).unwrap(), 0x80);
        let mut dest = vec![0xEEu8; 0x80];
        load_relocated(&elf, &mut dest, 0x0100_0000).unwrap();
        assert_eq!(u32::from_le_bytes(dest[0x10..0x14].try_into().unwrap()), 0x0100_0044);
        assert!(dest[0x60..].iter().all(|&b| b == 0));
    }

    #[test]
    fn refuses_garbage() {
        assert!(image_bytes(b"not an elf at all, really").is_err());
        let mut elf = tiny_pie();
        elf[18] = 62;
        assert!(image_bytes(&elf).is_err());
        let mut elf = tiny_pie();
        elf[0x144] = 2; // R_386_PC32
        assert!(load_relocated(&elf, &mut vec![0u8; 0x80], 0).is_err());
    }
}
