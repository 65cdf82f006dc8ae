//! vboot core library.
//!
//! Everything here is pure logic over byte buffers and the [`block::BlockDevice`] trait: no BIOS
//! calls, no hardware. stage2 (firmware) and the host tools (`vboot-install`, `vdisk`) are thin
//! shells around it, and every module is tested on the host with `cargo test`.
//!
//! Where a sector goes, from the top down:
//! `config` (grub.cfg, the `vboot` line) -> `part` (which partition) -> `fs` (which file, and its
//! extent list on the host disk) -> `image` (which layer of a differencing chain holds a virtual
//! sector) -> `int13` (what the guest asked for, in BIOS terms).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
// The core is pure logic: memory and hardware access belong to the firmware's few small modules.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod bytes;
pub mod config;
pub mod crc32;
pub mod elf;
pub mod eltorito;
pub mod fs;
pub mod handoff;
pub mod image;
pub mod int13;
pub mod install;
pub mod lkrn;
pub mod menu;
pub mod part;
pub mod reach;
pub mod realmode;
pub mod resident;
pub mod stub;
