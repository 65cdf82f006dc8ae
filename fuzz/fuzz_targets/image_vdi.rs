//! VDI dynamic, fixed and differencing (header, block map).
//! The input is a leaf file plus any other files (see `vboot_fuzz::images`); the checks are
//! those of `images::exercise`: no panic, memory under `Disk::memory_bytes()` + slack while
//! opening, holding, reading and writing, lookups inside the disk and data runs inside their file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vboot_fuzz::images::exercise(data, "disk.vdi");
});
