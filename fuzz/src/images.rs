//! What every image target does with its input: a few files (a leaf, its VMDK extents, its
//! parents) in an in-memory directory, opened as a chain the way stage2 and the engine open one,
//! then read and written.
//!
//! Input: parts separated by [`FILE_SEPARATOR`]. The first part is the leaf (named by the
//! target); each further part is `name\n` followed by the file. Every file is in the sparse
//! format of [`crate::sparse`] (or plain bytes), of at most 2^40 bytes.
//!
//! Properties checked:
//! - no panic, no allocation failure outside `try_reserve`, while opening, reading, writing;
//! - memory: while opening, and at any moment after, the live heap stays under
//!   `Disk::memory_bytes()` (the chain's stated bound, docs/memory.md) plus [`slack`]: names,
//!   messages, the per-extent records of a VMDK descriptor, and the transient 64 KiB pieces the
//!   open scan and an allocating write use;
//! - `Disk::lookup` answers a run that starts at the sector asked for, is not empty and does not
//!   pass the end of the disk;
//! - termination: the chain walk ends (cycles, depth), every lookup ends (libFuzzer's `-timeout`).

use std::cell::RefCell;
use std::rc::Rc;

use vboot::image::chain::{self, ChainOptions, ParentLocator};
use vboot::image::disk::Source;
use vboot::image::{open_chain, Disk, ImageFile};

use crate::heap;
use crate::sparse::{SparseFile, Store};
use crate::Cursor;

pub const FILE_SEPARATOR: &[u8] = b"=VBOOT-FUZZ-FILE=";
/// Largest file a part may declare (1 TiB: every table of every format up to its maximum).
const MAX_FILE_BYTES: u64 = 1 << 40;
/// At most this much live while a chain opens (NoMemory beyond, or an abort if infallible).
const OPEN_LIMIT: u64 = 96 << 20;

/// Memory a chain may hold beyond its stated bound: names and messages, descriptor records,
/// transient pieces of 64 KiB.
pub fn slack(input_len: usize, files: usize) -> u64 {
    (256 << 10) + 8 * input_len as u64 + 4096 * files as u64
}

#[derive(Default)]
pub struct MemDir {
    pub files: Vec<(String, Rc<RefCell<Store>>)>,
}

impl ParentLocator for MemDir {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let (name, store) = chain::find_listed(&self.files, path, |f| f.0.as_str())?;
        Some(Box::new(SparseFile { name: name.clone(), store: store.clone() }))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        chain::list_listed(&self.files, dir, |f| f.0.as_str())
    }
}

/// Split the input into the leaf and the other files, all in directory `/img`.
pub fn files_of(data: &[u8], leaf_name: &str) -> MemDir {
    let mut dir = MemDir::default();
    for (i, part) in crate::split_on(data, FILE_SEPARATOR).into_iter().enumerate().take(80) {
        let (name, body) = if i == 0 {
            (leaf_name.to_string(), part)
        } else {
            let nl = part.iter().position(|&b| b == b'\n').unwrap_or(part.len());
            let name = String::from_utf8_lossy(&part[..nl]).into_owned();
            (name, part.get(nl + 1..).unwrap_or(&[]))
        };
        let path = chain::join("/img", &name);
        dir.files.push((path, Rc::new(RefCell::new(Store::parse(body, MAX_FILE_BYTES)))));
    }
    dir
}

/// Make the VHD footers (at the end and the copy at 0) and the dynamic header checksum right,
/// so that mutations of their fields reach the code behind the checksum.
pub fn fix_vhd_checksums(store: &mut Store) {
    use vboot::image::vhd::checksum;
    let mut data_offset = None;
    for at in [Some(0), store.len.checked_sub(512)].into_iter().flatten() {
        let mut f = [0u8; 512];
        if store.len < at + 512 {
            continue;
        }
        store.read(at, &mut f);
        if &f[..8] != b"conectix" {
            continue;
        }
        let c = checksum(&f, 64);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        store.write(at, &f);
        data_offset = Some(u64::from_be_bytes(f[16..24].try_into().unwrap()));
    }
    if let Some(off) = data_offset.filter(|o| o.checked_add(1024).map_or(false, |e| e <= store.len)) {
        let mut h = [0u8; 1024];
        store.read(off, &mut h);
        if &h[..8] == b"cxsparse" {
            let c = checksum(&h, 36);
            h[36..40].copy_from_slice(&c.to_be_bytes());
            store.write(off, &h);
        }
    }
}

/// Open the chain whose leaf is the first file, then read, look up and write where the input's
/// tail says.
pub fn exercise(data: &[u8], leaf_name: &str) {
    let mut dir = files_of(data, leaf_name);
    let leaf = dir.files[0].0.clone();
    let nfiles = dir.files.len();
    // Where to read and write: the last 40 bytes of the input (they are also part of a file, so
    // a mutation there moves both).
    let tail = &data[data.len().saturating_sub(40)..];
    let mut ops = Cursor::new(tail);
    let lenient = ops.u8() & 1 == 1;
    if ops.u8() & 1 == 1 {
        for (_, store) in &dir.files {
            fix_vhd_checksums(&mut store.borrow_mut());
        }
    }
    let opts = ChainOptions { parent_dir: Some("/img/parents".into()), lenient_cid: lenient };

    heap::start(OPEN_LIMIT);
    let disk = open_chain(&leaf, &mut dir, &opts).and_then(|(layers, warnings)| Disk::new(layers, warnings));
    let Ok(mut disk) = disk else {
        heap::stop();
        return;
    };
    let bound = disk.memory_bytes().saturating_add(slack(data.len(), nfiles));
    let opened_peak = heap::peak();
    assert!(opened_peak <= bound, "opening took {} bytes at its peak; the chain states {} (+ slack = {})", opened_peak, disk.memory_bytes(), bound);
    let held = heap::live();
    assert!(held <= bound, "an open chain holds {} bytes; it states {} (+ slack = {})", held, disk.memory_bytes(), bound);
    // From now on nothing may pass the bound: a read or write never allocates a table.
    heap::set_limit(bound.max(heap::live()) + (1 << 20));
    heap::reset_peak();

    let sectors = disk.sectors();
    // VBOOT_FUZZ_DEBUG=1 prints the heap after each step (triage of a memory finding).
    let debug = std::env::var_os("VBOOT_FUZZ_DEBUG").is_some();
    let show = |what: &str| {
        if debug {
            eprintln!("{}: live {} peak {} bound {}", what, heap::live(), heap::peak(), bound);
        }
    };
    show("opened");
    let mut buf = vec![0u8; 16 * 512];
    if sectors > 0 {
        let mut lbas = vec![0, sectors - 1, sectors / 2];
        for _ in 0..4 {
            lbas.push(ops.u64() % sectors);
        }
        for &lba in &lbas {
            let run = disk.lookup(lba);
            if let Ok(run) = run {
                assert_eq!(run.start_sector, lba, "lookup({}) answered a run starting at {}", lba, run.start_sector);
                assert!(run.sectors >= 1, "lookup({}) answered an empty run", lba);
                assert!(lba.checked_add(run.sectors).map_or(false, |e| e <= sectors), "lookup({}) answered {} sectors past the end ({})", lba, run.sectors, sectors);
                // Every data run, a fixed VDI shorter than its last block included (vdi.rs maps
                // the missing part as zeros).
                let data = match run.source {
                    Source::Data { layer, file, offset_bytes } => Some((layer, file, offset_bytes)),
                    _ => None,
                };
                if let Some((layer, file, offset_bytes)) = data {
                    // The engine reads a data run straight from the file's extents: it must lie
                    // inside the file.
                    let name = disk.layers()[layer as usize].file_names().get(file as usize).cloned().expect("data run in a file the layer does not have");
                    let len = chain::find_listed(&dir.files, &name, |f| f.0.as_str()).map(|f| f.1.borrow().len);
                    if let Some(len) = len {
                        let end = offset_bytes.checked_add(run.sectors.saturating_mul(512));
                        assert!(end.map_or(false, |e| e <= len.next_multiple_of(512)), "lookup({}): data run at byte {} of {} for {} sectors passes the end of the file ({} bytes)", lba, offset_bytes, name, run.sectors, len);
                    }
                }
            }
            let n = (sectors - lba).min(16) as usize;
            let r = disk.read(lba, &mut buf[..n * 512]);
            show(&format!("read {}+{}: {:?}", lba, n, r.err()));
        }
        // Writes: into allocated data, into new blocks (slack), past the end.
        for i in 0..3 {
            let lba = ops.u64() % sectors;
            let n = ((ops.u8() % 16) as u64 + 1).min(sectors - lba) as usize;
            buf[..n * 512].fill(0xA5 ^ i);
            let w = disk.write(lba, &buf[..n * 512]);
            show(&format!("write {}+{}: {:?}", lba, n, w.err()));
            let _ = disk.read(lba, &mut buf[..n * 512]);
        }
    }
    let _ = disk.read(sectors, &mut buf[..512]);
    let _ = disk.read(u64::MAX, &mut buf[..512]);
    let _ = disk.write(u64::MAX - 1, &buf[..1024]);
    let after = heap::peak();
    assert!(after <= bound, "reads and writes took {} bytes at their peak; the chain states {} (+ slack = {})", after, disk.memory_bytes(), bound);
    heap::stop();
}
