//! The hand-off table reader (what `vboot-attach` trusts after the OS took over):
//! `Table::parse` on table bytes, or `handoff::locate` through a physical memory (IVT[13h], the
//! chain of safe hooks, the table). Input: flags, found_at (u64), kernel boot time (u64), then
//! the table (flags bit 1 clear) or the memory in the sparse format (bit 1 set; up to 4 GiB).
//! Flags bit 0 makes the harness fix both CRCs of a table first, so mutations reach the fields
//! behind them. Checks: no panic; a table that parses writes back (`to_bytes`) to one that parses
//! equal; `check_reserved`/`check_boot_time` on it; memory under twice the 16 MiB table bound plus 8x
//! the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::handoff::{check_boot_time, check_reserved, locate, Table};
use vboot_fuzz::{heap, sparse::Store, Cursor};

fn fix_crcs(t: &mut [u8]) {
    if t.len() < 96 {
        return;
    }
    let length = (u32::from_le_bytes(t[12..16].try_into().unwrap()) as usize).clamp(96, t.len());
    let body = vboot::crc32::crc32(&t[96..length]);
    t[20..24].copy_from_slice(&body.to_le_bytes());
    t[16..20].fill(0);
    let header = vboot::crc32::crc32(&t[..96]);
    t[16..20].copy_from_slice(&header.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let found_at = c.u64();
    let kernel_boot = c.u64();
    let mut rest = c.rest().to_vec();
    // The table is read whole (at most 16 MiB, MAX_TABLE_BYTES) and decoded into records of
    // about its own size.
    heap::start(2 * (16 << 20) + 8 * data.len() as u64 + (1 << 20));
    let table = if flags & 2 == 0 {
        if flags & 1 == 1 {
            fix_crcs(&mut rest);
        }
        Table::parse(&rest, found_at).map(|t| (t, rest.len() as u64))
    } else {
        let mem = Store::parse(&rest, 1 << 32);
        let mut read = |at: u64, buf: &mut [u8]| -> Result<(), String> {
            match at.checked_add(buf.len() as u64) {
                Some(end) if end <= mem.len => {
                    mem.read(at, buf);
                    Ok(())
                }
                _ => Err(String::from("past the end of memory")),
            }
        };
        locate(&mut read, &[(0, u64::MAX), (found_at, kernel_boot)]).map(|t| (t, 96))
    };
    let Ok((table, length)) = table else {
        heap::stop();
        return;
    };
    let _ = check_reserved(&table, length, &[(table.reserved_base, table.reserved_length), (found_at, kernel_boot)]);
    let _ = check_boot_time(&table, kernel_boot);
    heap::stop();
    let bytes = table.to_bytes();
    let back = Table::parse(&bytes, table.table_address).expect("a parsed table, written back, does not parse");
    assert_eq!(back, table, "a parsed table does not survive to_bytes");
});
