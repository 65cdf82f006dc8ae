//! ISO 9660 and El Torito: `eltorito::boot_image` (primary volume descriptor, boot record, boot
//! catalog's validation and default entries) over a sparse ISO file of up to 2^40 bytes, then,
//! for a hard-disk-emulation image, `hard_disk_image_sectors` on its MBR, and for floppy
//! emulation the floppy drive geometry. Checks: no panic; the boot image it accepts lies inside
//! the file (what stage2 loads and what the emulated drive serves); a hard-disk image never
//! reaches past the end of the file; every block read is inside the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::eltorito::{boot_image, hard_disk_image_sectors, Emulation, CD_BLOCK_BYTES};
use vboot_fuzz::sparse::Store;

fuzz_target!(|data: &[u8]| {
    let store = Store::parse(data, 1 << 40);
    let size = store.len;
    let mut reader = |lba: u64, buf: &mut [u8; CD_BLOCK_BYTES]| -> Result<(), String> {
        let at = lba.checked_mul(CD_BLOCK_BYTES as u64).expect("block address overflows");
        assert!(at + CD_BLOCK_BYTES as u64 <= size, "read of block {} past the end of a {}-byte file", lba, size);
        store.read(at, buf);
        Ok(())
    };
    let Ok(image) = boot_image(&mut reader, size) else { return };
    let start = image.first_file_sector() * 512;
    assert!(start < size, "boot image at byte {} outside the {}-byte file", start, size);
    let _ = image.load_segment();
    let _ = image.eltorito_boot();
    match image.emulation {
        Emulation::NoEmulation => {
            assert!(image.sector_count > 0);
            assert!(start + image.sector_count as u64 * 512 <= size, "the loaded sectors pass the end of the file");
        }
        Emulation::Floppy { bytes } => {
            assert!(start + bytes <= size, "the floppy image passes the end of the file");
            assert!(vboot::int13::FloppyFormat::from_size(bytes).is_some());
        }
        Emulation::HardDisk => {
            let mut mbr = [0u8; 512];
            store.read(start, &mut mbr);
            let left = size / 512 - image.first_file_sector();
            if let Ok(sectors) = hard_disk_image_sectors(&mbr, left) {
                assert!(sectors >= 1 && sectors <= left, "hard-disk image of {} sectors with {} left in the file", sectors, left);
            }
        }
    }
});
