//! vboot stage1: the 512-byte MBR. All of it is the assembly in `stage1.s`; this crate only
//! gives it a target, a linker script (`stage1.ld`) and a panic handler the toolchain requires.
#![no_std]
#![no_main]

core::arch::global_asm!(include_str!("stage1.s"), options(att_syntax));

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
