//! iobench: the disk measurements of the attach bench guest (tests/tests/bench.rs), run by the
//! guest's Linux on a block device. fio would be the usual tool, but Debian's package pulls in the
//! ceph and gluster libraries, too much for a busybox initramfs; this is the four fio jobs the
//! bench needs and nothing else. Built statically by the test harness (`guests::build_iobench`).
//!
//! iobench MODE DEVICE OFFSET_MIB LENGTH_MIB BLOCK_BYTES [COUNT]
//!   seq-read    read LENGTH_MIB from OFFSET_MIB in BLOCK_BYTES reads, through the page cache
//!               (dropped first), like a filesystem's readahead
//!   seq-write   write it, through the page cache, then fsync: the time includes reaching the disk
//!   rand-read   COUNT reads of BLOCK_BYTES at random aligned places in the range, O_DIRECT
//!   rand-write  the same with writes, O_DIRECT
//! Prints one line: `IOBENCH mode=M dev=D bytes=N ns=T`. Written bytes are pseudo-random, so
//! nothing on the way can recognise zeros.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

const O_DIRECT: i32 = 0o40000;
const DIRECT_ALIGN_BYTES: usize = 4096;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Storage for a buffer aligned for O_DIRECT, filled with pseudo-random bytes; the buffer is
/// `&mut storage[skip..skip + bytes]` with `skip` from [`aligned_start`].
fn random_storage(bytes: usize, rng: &mut XorShift) -> Vec<u8> {
    let mut raw = vec![0u8; bytes + DIRECT_ALIGN_BYTES];
    for chunk in raw.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    raw
}

fn aligned_start(storage: &[u8]) -> usize {
    storage.as_ptr().align_offset(DIRECT_ALIGN_BYTES)
}

fn drop_caches() {
    // Best effort: the bench guest runs as root with /proc mounted.
    if let Ok(mut f) = OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches") {
        let _ = f.write_all(b"3\n");
    }
}

fn fail(what: &str) -> ! {
    eprintln!("iobench: {}", what);
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        fail("usage: iobench MODE DEVICE OFFSET_MIB LENGTH_MIB BLOCK_BYTES [COUNT]");
    }
    let mode = args[1].as_str();
    let device = args[2].as_str();
    let number = |i: usize| -> u64 { args[i].parse().unwrap_or_else(|_| fail(&format!("not a number: {}", args[i]))) };
    let offset_bytes = number(3) << 20;
    let length_bytes = number(4) << 20;
    let block_bytes = number(5) as usize;
    let count = if args.len() > 6 { number(6) } else { 0 };
    if block_bytes == 0 || block_bytes % 512 != 0 || length_bytes < block_bytes as u64 {
        fail("the block must be whole sectors and fit the length");
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut storage = random_storage(block_bytes, &mut rng);
    let skip = aligned_start(&storage);
    let buf = &mut storage[skip..skip + block_bytes];
    let direct = matches!(mode, "rand-read" | "rand-write");
    let writes = matches!(mode, "seq-write" | "rand-write");
    let mut options = OpenOptions::new();
    options.read(true).write(writes);
    if direct {
        options.custom_flags(O_DIRECT);
    }
    let mut file: File = options.open(device).unwrap_or_else(|e| fail(&format!("open {}: {}", device, e)));
    drop_caches();
    let blocks_in_range = length_bytes / block_bytes as u64;
    let started = Instant::now();
    let moved_bytes: u64 = match mode {
        "seq-read" | "seq-write" => {
            file.seek(SeekFrom::Start(offset_bytes)).unwrap_or_else(|e| fail(&format!("seek: {}", e)));
            for _ in 0..blocks_in_range {
                let r = if writes { file.write_all(buf) } else { file.read_exact(buf) };
                r.unwrap_or_else(|e| fail(&format!("{} on {}: {}", mode, device, e)));
            }
            if writes {
                file.sync_all().unwrap_or_else(|e| fail(&format!("fsync {}: {}", device, e)));
            }
            blocks_in_range * block_bytes as u64
        }
        "rand-read" | "rand-write" => {
            if count == 0 {
                fail("random modes need a COUNT");
            }
            for _ in 0..count {
                let at = offset_bytes + (rng.next() % blocks_in_range) * block_bytes as u64;
                let r = if writes { file.write_all_at(buf, at) } else { file.read_exact_at(buf, at) };
                r.unwrap_or_else(|e| fail(&format!("{} at byte {} of {}: {}", mode, at, device, e)));
            }
            count * block_bytes as u64
        }
        _ => fail(&format!("unknown mode {} (seq-read, seq-write, rand-read, rand-write)", mode)),
    };
    let ns = started.elapsed().as_nanos();
    println!("IOBENCH mode={} dev={} bytes={} ns={}", mode, device, moved_bytes, ns);
}
