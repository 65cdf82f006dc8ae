//! Test harness: disk building and QEMU.
