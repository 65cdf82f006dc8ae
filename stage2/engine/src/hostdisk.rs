//! A raw image file as an emulated disk: virtual sector -> file sector -> host LBA through the
//! file's extent list, then the original INT 13h (AH=42h/43h) on the host disk. Host sectors are
//! read straight into the guest's buffer when it lies below 1 MiB, else through the stub's
//! bounce buffer.

use alloc::format;
use alloc::string::String;
use vboot::block::{BlockDevice, BlockError};
use vboot::image::{ExtentFile, ImageFile};
use vboot::int13::{Chs, DiskError, EmulatedDisk, GuestMemory, Regs, Status, StraightRun};
use vboot::resident::{PlannedDrive, PlannedKind};

use crate::lowmem;
use crate::stub::{Stub, Vector, BOUNCE_BYTES};

/// At most this many sectors per AH=42h call (EDD's limit, and 127 * 512 + 15 fits a segment).
const MAX_SECTORS_PER_CALL: u64 = 127;

/// The host disk, through the original INT 13h.
#[derive(Clone, Copy)]
pub struct HostIo {
    pub stub: Stub,
    pub host_drive: u8,
}

/// The larger buffer stage2 lends for host transfers while `engine_init` runs (Plan's
/// `init_bounce_*`): linear address and bytes, 0 bytes when none. Set by [`lend_init_bounce`]
/// at the start of init and cleared at its end, before any guest call can come.
static INIT_BOUNCE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Use `bytes` at `linear` (below 1 MiB, whole sectors) for host transfers until
/// [`return_init_bounce`].
pub fn lend_init_bounce(linear: u32, bytes: u32) {
    INIT_BOUNCE.store(((linear as u64) << 32) | bytes as u64, core::sync::atomic::Ordering::SeqCst);
}

pub fn return_init_bounce() {
    INIT_BOUNCE.store(0, core::sync::atomic::Ordering::SeqCst);
}

/// While a guest write goes through the image layer (`chain.rs`), the engine's copy of the
/// guest's buffer and where that buffer lies in guest memory: a host write of bytes from the copy
/// (a new block's data, `image::write_new_unit`) is made from the guest's buffer instead, with
/// no bounce. (copy address, bytes, guest linear address); bytes 0: none.
struct GuestMirror {
    copy: core::sync::atomic::AtomicUsize,
    bytes: core::sync::atomic::AtomicUsize,
    linear: core::sync::atomic::AtomicU32,
}
static GUEST_MIRROR: GuestMirror = GuestMirror {
    copy: core::sync::atomic::AtomicUsize::new(0),
    bytes: core::sync::atomic::AtomicUsize::new(0),
    linear: core::sync::atomic::AtomicU32::new(0),
};

/// Run `f` with `copy` known to hold the same bytes as guest memory at `linear` (real memory
/// below 1 MiB, whole sectors, checked by the INT 13h layer as the guest's buffer).
pub fn with_guest_mirror<R>(copy: &[u8], linear: u32, f: impl FnOnce() -> R) -> R {
    use core::sync::atomic::Ordering::SeqCst;
    GUEST_MIRROR.copy.store(copy.as_ptr() as usize, SeqCst);
    GUEST_MIRROR.linear.store(linear, SeqCst);
    GUEST_MIRROR.bytes.store(copy.len(), SeqCst);
    let r = f();
    GUEST_MIRROR.bytes.store(0, SeqCst);
    r
}

/// No mirror: at the start of every call, so that one a panic abandoned (recover.rs) never
/// outlives its call.
pub fn forget_guest_mirror() {
    GUEST_MIRROR.bytes.store(0, core::sync::atomic::Ordering::SeqCst);
}

/// Where `buf` lies in guest memory, if it is part of the mirrored copy and whole sectors.
fn mirrored(buf: &[u8]) -> Option<u32> {
    use core::sync::atomic::Ordering::SeqCst;
    let bytes = GUEST_MIRROR.bytes.load(SeqCst);
    let copy = GUEST_MIRROR.copy.load(SeqCst);
    let at = (buf.as_ptr() as usize).checked_sub(copy)?;
    (bytes != 0 && buf.len() % 512 == 0 && at.checked_add(buf.len())? <= bytes).then(|| GUEST_MIRROR.linear.load(SeqCst) + at as u32)
}

/// The mirrored guest buffer now: (guest linear address, bytes), if a guest write is mirrored.
fn mirror_region() -> Option<(u32, usize)> {
    use core::sync::atomic::Ordering::SeqCst;
    let bytes = GUEST_MIRROR.bytes.load(SeqCst);
    (bytes != 0).then(|| (GUEST_MIRROR.linear.load(SeqCst), bytes))
}

/// Below this, low memory holds the interrupt vectors and the BIOS data area, which an interrupt
/// during the host call reads: never borrowed.
const FIRST_FREE_LINEAR: u32 = 0x500;

impl HostIo {
    /// Zeros of a new block or grain (`image::write_new_unit`) written from the guest's own
    /// buffer, zeroed for the moment and put back after: one BIOS call per up to 127 sectors
    /// instead of one per 3 sectors of the bounce buffer (a new 2 MiB VHD block: 33 calls with a
    /// 64 KiB guest write instead of 1,366). Only while a guest write is mirrored (its buffer is
    /// the guest's to lend for the length of its call), only for a buffer larger than the bounce
    /// buffer and wholly in conventional memory between the BIOS data area and the stub (RAM
    /// that no interrupt handler reads). `None`: not possible, use the bounce buffer. The guest's
    /// bytes are saved first and written back whatever the host answered (docs/int13.md, "Zeros
    /// from the guest's buffer").
    fn write_zeros_from_guest_buffer(&self, host_lba: u64, sectors: u64) -> Option<Result<(), Status>> {
        let (linear, bytes) = mirror_region()?;
        let lend_sectors = ((bytes / 512) as u64).min(MAX_SECTORS_PER_CALL);
        let lend_bytes = lend_sectors as usize * 512;
        let end = linear.checked_add(lend_bytes as u32)?;
        if lend_bytes <= BOUNCE_BYTES as usize || linear < FIRST_FREE_LINEAR || end > self.stub.linear() {
            return None;
        }
        let mut saved = alloc::vec::Vec::new();
        saved.try_reserve_exact(lend_bytes).ok()?;
        saved.resize(lend_bytes, 0);
        lowmem::read(linear, &mut saved);
        lowmem::fill(linear, 0, lend_bytes);
        let mut result = Ok(());
        let mut done = 0u64;
        while done < sectors {
            let n = (sectors - done).min(lend_sectors);
            if let Err(e) = self.call(true, host_lba + done, n, linear) {
                result = Err(e);
                break;
            }
            done += n;
        }
        lowmem::write(linear, &saved);
        Some(result)
    }

    /// The bounce buffer for host transfers now: the one stage2 lent during init, else the
    /// stub's own (linear address, bytes).
    fn bounce(&self) -> (u32, usize) {
        let lent = INIT_BOUNCE.load(core::sync::atomic::Ordering::SeqCst);
        if lent as u32 != 0 {
            ((lent >> 32) as u32, lent as u32 as usize)
        } else {
            (self.stub.bounce_linear(), BOUNCE_BYTES as usize)
        }
    }


    /// One AH=42h/43h call on the host disk into `buf_linear` (below 1 MiB).
    fn call(&self, write: bool, host_lba: u64, sectors: u64, buf_linear: u32) -> Result<(), Status> {
        let dap = vboot::int13::edd::DiskAddressPacket::seg_off_request(host_lba, sectors as u16, buf_linear);
        let dap_linear = self.stub.set_dap(&dap);
        let mut r = Regs {
            eax: if write { 0x4300 } else { 0x4200 },
            edx: self.host_drive as u32,
            esi: dap_linear & 0xF,
            ds: (dap_linear >> 4) as u16,
            ..Regs::default()
        };
        self.stub.call_bios(Vector::Int13, &mut r);
        if r.flags & 1 != 0 {
            return Err(match r.ah() {
                0 => Status::SECTOR_NOT_FOUND,
                s => Status(s),
            });
        }
        Ok(())
    }

    /// Host sectors into engine memory, through the bounce buffer.
    pub fn read_host(&self, host_lba: u64, buf: &mut [u8]) -> Result<(), Status> {
        let (bounce, bytes) = self.bounce();
        for (i, chunk) in buf.chunks_mut(bytes).enumerate() {
            let n = chunk.len().div_ceil(512) as u64;
            self.call(false, host_lba + i as u64 * (bytes / 512) as u64, n, bounce)?;
            lowmem::read(bounce, chunk);
            self.stub.count_copied(chunk.len());
        }
        Ok(())
    }

    /// Engine memory to host sectors, through the bounce buffer. Callers check invariant 1
    /// (docs/architecture.md) first.
    pub fn write_host(&self, host_lba: u64, buf: &[u8]) -> Result<(), Status> {
        if let Some(linear) = mirrored(buf) {
            let sectors = buf.len() as u64 / 512;
            let mut done = 0u64;
            while done < sectors {
                let n = (sectors - done).min(MAX_SECTORS_PER_CALL);
                self.call(true, host_lba + done, n, linear + done as u32 * 512)?;
                done += n;
            }
            return Ok(());
        }
        // Only while a guest write is mirrored is there a buffer to lend: look at the bytes then.
        if mirror_region().is_some() && buf.len() > BOUNCE_BYTES as usize && buf.len() % 512 == 0 && buf.iter().all(|&b| b == 0) {
            if let Some(result) = self.write_zeros_from_guest_buffer(host_lba, buf.len() as u64 / 512) {
                return result;
            }
        }
        let (bounce, bytes) = self.bounce();
        for (i, chunk) in buf.chunks(bytes).enumerate() {
            lowmem::write(bounce, chunk);
            self.stub.count_copied(chunk.len());
            let n = chunk.len().div_ceil(512) as u64;
            self.call(true, host_lba + i as u64 * (bytes / 512) as u64, n, bounce)?;
        }
        Ok(())
    }

    /// `sectors` contiguous host sectors to or from guest memory at `linear`: straight into or
    /// out of the guest's buffer when it is real memory below 1 MiB, else through the bounce
    /// buffer (a scratch memory, such as engine_init's geometry probe, must never be DMA'd into).
    pub fn guest_io(&self, write: bool, host_lba: u64, sectors: u64, mem: &mut dyn GuestMemory, linear: u64) -> Result<(), Status> {
        let mut done = 0u64;
        while done < sectors {
            let at = linear + done * 512;
            let want = (sectors - done).min(MAX_SECTORS_PER_CALL);
            if mem.is_physical() && at + want * 512 <= 0x10_0000 {
                self.call(write, host_lba + done, want, at as u32)?;
                done += want;
                continue;
            }
            let n = want.min((BOUNCE_BYTES / 512) as u64);
            let mut tmp = [0u8; BOUNCE_BYTES as usize];
            let bytes = &mut tmp[..n as usize * 512];
            if write {
                mem.read(at, bytes).map_err(|_| Status::BOUNDARY_ERROR)?;
                self.write_host(host_lba + done, bytes)?;
            } else {
                self.read_host(host_lba + done, bytes)?;
                mem.write(at, bytes).map_err(|_| Status::BOUNDARY_ERROR)?;
            }
            done += n;
        }
        Ok(())
    }
}

/// The host disk as a sector device, for the image files kept in place on it
/// (`vboot::image::ExtentFile`). Its size is the BIOS's business: a sector past the end fails
/// there.
impl BlockDevice for HostIo {
    fn sector_count(&self) -> u64 {
        u64::MAX
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.read_host(lba, buf).map_err(|s| BlockError::Io { lba, status: s.0 as u32 })
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.write_host(lba, buf).map_err(|s| BlockError::Io { lba, status: s.0 as u32 })
    }
}

pub struct RawFile {
    io: HostIo,
    /// The image file in place on the host disk: where each sector lies, and the write check.
    file: ExtentFile<HostIo>,
    sectors: u64,
    read_only: bool,
    /// 512-byte sectors per block the guest addresses: 1, or 4 for a CD's 2048-byte blocks.
    sectors_per_block: u64,
}

impl RawFile {
    pub fn new(io: HostIo, d: &PlannedDrive) -> Result<RawFile, String> {
        let layer = d.layers.first().ok_or_else(|| format!("drive {:#04x} has no image", d.number))?;
        let sectors_per_block = if d.kind == PlannedKind::Cdrom { 4 } else { 1 };
        let block_bytes = 512 * sectors_per_block;
        // A CD image may end in a partial block (it is never addressed); a disk may not.
        if sectors_per_block == 1 && layer.size_bytes % 512 != 0 {
            return Err(format!(
                "{} is {} bytes, not a whole number of 512-byte sectors",
                layer.path, layer.size_bytes
            ));
        }
        let sectors = layer.size_bytes / block_bytes * sectors_per_block;
        if sectors == 0 {
            return Err(format!("{} holds no whole {}-byte block", layer.path, block_bytes));
        }
        if layer.extents.total_sectors() < sectors {
            return Err(format!("{}: its extent list covers less than the file", layer.path));
        }
        Ok(RawFile {
            io,
            file: ExtentFile::new(io, layer.path.clone(), layer.size_bytes, layer.extents.clone(), !d.read_only),
            sectors,
            read_only: d.read_only,
            sectors_per_block,
        })
    }

    /// `count` guest blocks from block `lba`, in 512-byte sectors underneath.
    fn transfer(&mut self, write: bool, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        let spb = self.sectors_per_block;
        // A CD block number near 2^64 (the guest's registers) has no sector number.
        let first = lba.checked_mul(spb).ok_or(DiskError { done_blocks: 0, status: Status::SECTOR_NOT_FOUND })?;
        self.transfer_sectors(write, first, count as u64 * spb, mem, buf_linear)
            .map_err(|e| DiskError { done_blocks: (e.done_blocks as u64 / spb) as u32, status: e.status })
    }

    fn transfer_sectors(&mut self, write: bool, lba: u64, count: u64, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        let count = u32::try_from(count).map_err(|_| DiskError { done_blocks: 0, status: Status::INVALID })?;
        let mut done: u32 = 0;
        let fail = |done: u32, status: Status| DiskError { done_blocks: done, status };
        while done < count {
            let sector = lba.checked_add(done as u64).filter(|&s| s < self.sectors).ok_or(fail(done, Status::SECTOR_NOT_FOUND))?;
            let (host_lba, run) = self.file.host_run(sector * 512).ok_or(fail(done, Status::SECTOR_NOT_FOUND))?;
            let n = run.min((count - done) as u64).min(MAX_SECTORS_PER_CALL);
            let linear = buf_linear + done as u64 * 512;
            // Invariant 1 (docs/architecture.md): never write a host sector outside the image file.
            if write && !self.file.owns(host_lba, n) {
                return Err(fail(done, Status::WRITE_FAULT));
            }
            self.io.guest_io(write, host_lba, n, mem, linear).map_err(|s| fail(done, s))?;
            done += n as u32;
        }
        Ok(())
    }
}

impl EmulatedDisk for RawFile {
    fn block_count(&self) -> u64 {
        self.sectors / self.sectors_per_block
    }
    fn block_bytes(&self) -> u32 {
        512 * self.sectors_per_block as u32
    }
    fn geometry(&self) -> Option<Chs> {
        None
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        self.transfer(false, lba, count, mem, buf_linear)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED });
        }
        self.transfer(true, lba, count, mem, buf_linear)
    }
    /// One extent of the file: a raw image has no metadata, so a write there is only the write
    /// (invariant 1 holds: the run is the file's own, checked as every write is).
    fn straight_run(&mut self, lba: u64) -> Option<StraightRun> {
        if self.sectors_per_block != 1 || lba >= self.sectors {
            return None;
        }
        let (host_lba, contiguous) = self.file.host_run(lba * 512)?;
        let blocks = contiguous.min(self.sectors - lba);
        let writable = !self.read_only && self.file.owns(host_lba, blocks);
        Some(StraightRun { lba, blocks, host_lba, writable })
    }
}
