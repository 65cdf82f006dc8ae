//! The memory an open image chain takes is bounded by its size class, not by its history
//! (docs/memory.md). Each test opens images the sizes users have (made sparse by qemu-img, so
//! they cost little disk), reads and writes through the core library exactly as the boot engine
//! does, and counts every byte the process allocates:
//! - the peak while opening and using a chain stays under what `Disk::memory_bytes` promised
//!   (the figure stage2 sizes the engine's heap with), plus the transient buffers of one
//!   request;
//! - that promise itself stays under the format's stated bound;
//! - a write that allocates allocates the same amount at the first and the last of 2,000
//!   scattered writes (no copy of anything that grows with the disk's history).
//!
//! The figures printed here go to docs/benchmarks.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use vboot::image::chain::{open_chain, ChainOptions, ParentLocator};
use vboot::image::{Disk, ImageError, ImageFile};
use vboot_tests::{qemu_img, TempDir};

/// Counts the bytes allocated now and the most at any moment since the last reset.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
            TOTAL.fetch_add(l.size(), Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are process-wide: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Bytes allocated above the level at the start of `f`, at its peak.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

/// A host file read and written with pread/pwrite and no fsync (the writes here are many and
/// the test checks memory, not durability).
struct HostFile {
    file: std::fs::File,
    name: String,
    len: u64,
}

impl ImageFile for HostFile {
    fn len_bytes(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        if offset_bytes + buf.len() as u64 > self.len {
            return Err(ImageError::Io { image: self.name.clone(), offset_bytes, detail: "past the end".into() });
        }
        self.file.read_exact_at(buf, offset_bytes).map_err(|e| ImageError::Io { image: self.name.clone(), offset_bytes, detail: e.to_string() })
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        self.file.write_all_at(buf, offset_bytes).map_err(|e| ImageError::Io { image: self.name.clone(), offset_bytes, detail: e.to_string() })?;
        self.len = self.len.max(offset_bytes + buf.len() as u64);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn can_grow(&self) -> bool {
        true
    }
}

struct Locator {
    writable_leaf: bool,
}

impl Locator {
    fn file(path: &str, writable: bool) -> Option<HostFile> {
        let file = std::fs::OpenOptions::new().read(true).write(writable).open(path).ok()?;
        let len = file.metadata().ok()?.len();
        Some(HostFile { file, name: path.to_string(), len })
    }
}

impl ParentLocator for Locator {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        Locator::file(path, false).map(|f| Box::new(f) as Box<dyn ImageFile>)
    }
    fn open_leaf(&mut self, path: &str) -> Result<Box<dyn ImageFile>, ImageError> {
        Locator::file(path, self.writable_leaf)
            .map(|f| Box::new(f) as Box<dyn ImageFile>)
            .ok_or_else(|| ImageError::Io { image: path.into(), offset_bytes: 0, detail: "cannot open".into() })
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default();
        v.sort();
        v
    }
}

fn open(path: &str, writable: bool) -> Disk {
    let (layers, warnings) = open_chain(path, &mut Locator { writable_leaf: writable }, &ChainOptions::default()).unwrap();
    Disk::new(layers, warnings).unwrap()
}

/// What one request may allocate and free again on top of the chain's own memory: a 64 KiB
/// grain or block fill buffer, a grain table window, error strings.
const TRANSIENT_BYTES: usize = 192 << 10;

/// Open `path`, read sectors spread over the whole disk (every grain table, bitmap or block
/// map page gets touched at least once), and check the peak against the promise and the
/// promise against `bound_bytes`. Returns (promised bytes, peak bytes).
fn check_open_and_read(path: &str, bound_bytes: u64, what: &str) -> (u64, usize) {
    check_open_and_read_with(path, bound_bytes, 0, what)
}

/// The same, for a format whose open also takes `open_check_bytes` for a moment (the VDI slot
/// check: one bit per block, freed before open returns).
fn check_open_and_read_with(path: &str, bound_bytes: u64, open_check_bytes: u64, what: &str) -> (u64, usize) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ((promised, sectors), peak) = peak_during(|| {
        let mut d = open(path, false);
        let promised = d.memory_bytes();
        let sectors = d.sectors();
        let mut buf = vec![0u8; 64 * 1024];
        // 4,000 reads, spread evenly from the first sector to the last.
        for i in 0..4000u64 {
            let s = (sectors - 128) / 3999 * i;
            d.read(s, &mut buf).unwrap();
        }
        (promised, sectors)
    });
    eprintln!(
        "{:<52} {:>8} GiB: promised {:>6} KiB, peak {:>6} KiB (bound {} KiB)",
        what,
        sectors * 512 >> 30,
        promised / 1024,
        peak / 1024,
        bound_bytes / 1024
    );
    assert!(promised <= bound_bytes, "{}: the chain promises {} bytes, more than the bound {}", what, promised, bound_bytes);
    assert!(
        peak as u64 <= promised + TRANSIENT_BYTES as u64 + 64 * 1024 + open_check_bytes,
        "{}: opening and reading peaked at {} bytes, but Disk::memory_bytes promised {} (+{} transient)",
        what,
        peak,
        promised,
        TRANSIENT_BYTES
    );
    (promised, peak)
}

#[test]
fn vmdk_monolithic_sparse_100_gib_stays_under_its_bound() {
    let dir = TempDir::new("mem-vmdk100");
    let p = dir.file("big.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &p, "100G"]);
    // Grain directory and its copy: 4 bytes per 32 MiB each; 32 cached grain tables of 2 KiB.
    check_open_and_read(&p, 2 * 4 * (100 << 5) + 64 * 1024 + 32 * 1024, "VMDK monolithicSparse");
}

#[test]
fn vmdk_two_gb_max_extent_sparse_500_gib_stays_under_its_bound() {
    let dir = TempDir::new("mem-vmdk500");
    let p = dir.file("split.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", &p, "500G"]);
    // 250 extents: each its directory pair (64 entries), the descriptor text, one shared cache.
    check_open_and_read(&p, 250 * (2 * 4 * 64 + 256) + 64 * 1024 + 64 * 1024, "VMDK twoGbMaxExtentSparse (250 extent files)");
}

#[test]
fn vhd_dynamic_2040_gib_stays_under_its_bound() {
    let dir = TempDir::new("mem-vhd2040");
    let p = dir.file("big.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", &p, "2040G"]);
    // The BAT: 4 bytes per 2 MiB block (4 MiB at the format's maximum), 64 KiB of bitmaps.
    check_open_and_read(&p, (2040u64 << 30) / (2 << 20) * 4 + 64 * 1024 + 16 * 1024, "VHD dynamic");
}

#[test]
fn vdi_dynamic_2_tib_stays_under_its_bound() {
    let dir = TempDir::new("mem-vdi2t");
    let p = dir.file("big.vdi");
    qemu_img(&["create", "-q", "-f", "vdi", &p, "2T"]);
    // The block map: 4 bytes per 1 MiB block; opening also checks that no two blocks share a
    // slot, with one bit per block for that moment (256 KiB).
    check_open_and_read_with(&p, (2u64 << 40) / (1 << 20) * 4 + 16 * 1024, (2u64 << 40) / (1 << 20) / 8, "VDI dynamic");
}

#[test]
fn vhd_chain_of_depth_8_over_1_tib_stays_under_its_bound() {
    let dir = TempDir::new("mem-vhdchain");
    let base = dir.file("c0.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", &base, "1T"]);
    let vdisk = vboot_tests::vdisk_bin();
    let mut leaf = base.clone();
    for i in 1..8 {
        let child = dir.file(&format!("c{}.vhd", i));
        vboot_tests::sh(std::process::Command::new(&vdisk).arg("snapshot").arg(&leaf).arg(&child).args(["--reserve", "0"]));
        leaf = child;
    }
    // 8 BATs of 2 MiB and 8 bitmap caches.
    let per_layer = (1u64 << 40) / (2 << 20) * 4 + 64 * 1024 + 16 * 1024;
    check_open_and_read(&leaf, 8 * per_layer, "VHD differencing chain, depth 8");
}

/// xorshift: a reproducible shuffle.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A 64 GiB VMDK whose grains were written in shuffled order (the layout that made the old
/// flattened map grow, and every write copy it), then 2,000 more allocating writes at scattered
/// places: memory stays what it was at open, and the 100 last writes allocate no more than the
/// 100 first. qemu-img checks the image afterwards and reads back what was written.
#[test]
fn shuffled_vmdk_writes_cost_the_same_first_and_last() {
    let dir = TempDir::new("mem-shuffled");
    let p = dir.file("shuffled.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &p, "64G"]);
    let grains = (64u64 << 30) / (64 << 10);
    let mut order: Vec<u64> = (0..grains).collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..order.len()).rev() {
        order.swap(i, (next(&mut x) % (i as u64 + 1)) as usize);
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = open(&p, true);
    let promised = d.memory_bytes();
    // 20,000 grains of history (1.25 GiB of data), one sector each, shuffled.
    let history = 20_000usize;
    for (i, g) in order[..history].iter().enumerate() {
        d.write(g * 128, &[(i % 251) as u8 + 1; 512]).unwrap();
    }
    let mut per_write_alloc = Vec::new();
    let mut per_write_peak = Vec::new();
    for g in &order[history..history + 2000] {
        let before = TOTAL.load(Ordering::SeqCst);
        let (_, peak) = peak_during(|| d.write(g * 128 + 7, &[0xA5; 512]).unwrap());
        per_write_alloc.push(TOTAL.load(Ordering::SeqCst) - before);
        per_write_peak.push(peak);
    }
    let first: usize = per_write_alloc[..100].iter().sum::<usize>() / 100;
    let last: usize = per_write_alloc[1900..].iter().sum::<usize>() / 100;
    let peak = per_write_peak.iter().max().copied().unwrap_or(0);
    eprintln!(
        "shuffled 64 GiB VMDK, {} grains of history: promised {} KiB; an allocating write allocates {} bytes (first 100) / {} bytes (last 100), peak {} KiB",
        history,
        promised / 1024,
        first,
        last,
        peak / 1024
    );
    assert_eq!(d.memory_bytes(), promised, "the chain's memory changed while it was written");
    assert!(last <= first + first / 10, "the last writes allocate {} bytes each, the first {}", last, first);
    assert!(peak <= TRANSIENT_BYTES, "one write peaked at {} bytes", peak);
    drop(d);
    drop(_g);
    // qemu-img finds the image consistent and reads what was written where it was written.
    vboot_tests::qemu_img_check(std::path::Path::new(&p), "shuffled VMDK after 22,000 writes: ");
    for (i, g) in order[..history].iter().enumerate().step_by(997) {
        let want = format!("{}", (i % 251) + 1);
        vboot_tests::qemu_io("vmdk", &p, &[&format!("read -P {} {} 512", want, g * 128 * 512)]);
    }
    for g in order[history..history + 2000].iter().step_by(101) {
        vboot_tests::qemu_io("vmdk", &p, &[&format!("read -P 0xa5 {} 512", (g * 128 + 7) * 512)]);
    }
}
