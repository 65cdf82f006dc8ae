//! The engine's ELF relocator (`elf::image_bytes`, `elf::load_relocated`): program headers,
//! PT_LOAD copies, PT_DYNAMIC, R_386_RELATIVE relocations. Input: the load base (u32), then the
//! ELF file. Checks: no panic (overflow checks on); the destination is exactly `image_bytes`
//! long (up to 16 MiB here), so a segment or a relocation outside it must be an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::elf::{image_bytes, load_relocated};
use vboot_fuzz::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let base = c.u32();
    let elf = c.rest();
    let Ok(n) = image_bytes(elf) else { return };
    assert!(n > 0);
    if n > 16 << 20 {
        return;
    }
    let mut dest = vec![0u8; n as usize];
    let _ = load_relocated(elf, &mut dest, base);
    // A destination larger than the image (stage2 rounds it up) must work the same way.
    let mut bigger = vec![0u8; n as usize + 4096];
    let _ = load_relocated(elf, &mut bigger, base);
});
