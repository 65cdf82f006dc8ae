//! The pivot's system side (docs/vboot-attach.md, "The pivot"): the server's control socket
//! (abstract `@vboot-attach/nbdN`), the file descriptors passed over it (SCM_RIGHTS), the
//! extents the host filesystem gives (FS_IOC_FIEMAP, or FIBMAP where a filesystem has no
//! FIEMAP), and `vboot-attach --pivot FILE`, the client.
//!
//! The exchange, one line each way at a time:
//! 1. server: `hello ...` ([`Hello`]): device, host partition, state, whether it writes, files;
//! 2. client: `pivot` with one read-only descriptor per file of the chain, leaf first (the client
//!    opens them, in its own mount namespace and root: after switch-root the server's root is the
//!    old initramfs); the server checks every file against the table, on a thread, serving on;
//! 3. server: `refused\tWHY`, or `pivoted\tWHAT` when it does not write the files (read-only,
//!    immutable), or `remount` when it does: it has stopped serving and flushed the host disk;
//! 4. client: remounts the filesystem read-write, sends `files` with the files opened again, the
//!    leaf read-write (the others too where they can be: a split VMDK's extents are written), or
//!    `abort`; the server checks they are the same files, the read-write ones still at the same
//!    sectors, switches, and answers `pivoted\tWHAT` or `refused\tWHY` (and serves from the
//!    host disk again).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use vboot::fs::Extent;
use vboot_attach::pivot::{self, Hello, Mount};

use crate::vdisk::VirtualDisk;

/// How long either side waits for the other's next line. The server stops serving between its
/// `remount` and the client's `leaf`: past this it serves from the host disk again.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for the server's check of the files.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_FDS: usize = 64;

/// `major:minor` of a device number, as /proc/self/mountinfo writes it.
fn majmin(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// What the server tells clients about itself.
#[derive(Clone)]
pub struct ServerInfo {
    pub device: String,
    /// `major:minor` of the host partition.
    pub partition: String,
    pub partition_start_lba: u64,
}

/// The server's control socket, bound before it forks (so a second server for the same device
/// is refused at once).
pub fn listen(device: &str) -> Result<UnixListener, String> {
    let name = pivot::socket_name(device);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| format!("@{}: {}", name, e))?;
    let l = UnixListener::bind_addr(&addr).map_err(|e| format!("creating the control socket @{}: {} (another server for {}?)", name, e, device))?;
    l.set_nonblocking(true).map_err(|e| format!("@{}: {}", name, e))?;
    Ok(l)
}

/// `major:minor` of /sys/class/block/NAME.
pub fn device_number(name: &str) -> Result<String, String> {
    let p = format!("/sys/class/block/{}/dev", name);
    std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(|e| format!("{}: {}", p, e))
}

fn send(s: &mut UnixStream, line: &str, fds: &[&File]) -> io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut iov = libc::iovec { iov_base: line.as_ptr() as *mut libc::c_void, iov_len: line.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((raw.len() * 4) as u32) } as usize;
    let mut control = vec![0u8; if raw.is_empty() { 0 } else { space }];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
        // SAFETY: `msg` points at `control`, which has room (CMSG_SPACE) for one header and
        // `raw.len()` descriptors; CMSG_FIRSTHDR is therefore not null and CMSG_DATA has room.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr() as *const u8, libc::CMSG_DATA(c), raw.len() * 4);
        }
    }
    // SAFETY: `msg` and everything it points to (iov, line, control) live across the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // A short line: the rest without descriptors.
    s.write_all(&line.as_bytes()[n as usize..])
}

/// One line and the descriptors that came with it.
fn receive(s: &mut UnixStream) -> io::Result<(String, Vec<File>)> {
    let mut data = vec![0u8; 4096];
    // SAFETY: CMSG_SPACE only computes a size.
    let mut control = vec![0u8; unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = control.len() as _;
    // SAFETY: `msg` points at `data` and `control`, both live and of the lengths given.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut files = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR/NXTHDR stay inside
    // it, and an SCM_RIGHTS message carries (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are
    // now ours (each is owned by exactly one File).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let p = libc::CMSG_DATA(c) as *const i32;
                for i in 0..count {
                    files.push(File::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("more than {} descriptors", MAX_FDS)));
    }
    let mut line = data[..n as usize].to_vec();
    while !line.ends_with(b"\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other side went away"));
        }
        line.push(b[0]);
    }
    line.pop();
    Ok((String::from_utf8_lossy(&line).into_owned(), files))
}

// linux/fiemap.h
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
/// Not where the data is, or not yet anywhere: UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED,
/// NOT_ALIGNED, DATA_INLINE, DATA_TAIL.
const FIEMAP_EXTENT_ELSEWHERE: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400;
// linux/fs.h: FIBMAP and FIGETBSZ take a pointer to an int.
const FIBMAP: libc::c_ulong = 1;
const FIGETBSZ: libc::c_ulong = 2;
const FIEMAP_EXTENTS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; FIEMAP_EXTENTS],
}

/// The host sectors of `f` (`name` for messages) as the filesystem on the partition starting at
/// `part_start_lba` places them, and which call said so ("FIEMAP" or "FIBMAP").
fn filesystem_extents(f: &File, name: &str, part_start_lba: u64) -> Result<(Vec<Extent>, &'static str), String> {
    let mut out = Vec::new();
    let mut m = Box::new(Fiemap { start: 0, length: 0, flags: 0, mapped_extents: 0, extent_count: 0, reserved: 0, extents: [FiemapExtent::default(); FIEMAP_EXTENTS] });
    let mut start = 0u64;
    loop {
        m.start = start;
        m.length = u64::MAX - start;
        m.flags = FIEMAP_FLAG_SYNC;
        m.extent_count = FIEMAP_EXTENTS as u32;
        m.mapped_extents = 0;
        // SAFETY: FS_IOC_FIEMAP reads and writes one struct fiemap followed by extent_count
        // extents: `m` is exactly that, live and exclusively borrowed for the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut *m as *mut Fiemap) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)) && start == 0 {
                return fibmap_extents(f, name, part_start_lba).map(|v| (v, "FIBMAP"));
            }
            return Err(format!("{}: FIEMAP: {}", name, e));
        }
        let got = &m.extents[..(m.mapped_extents as usize).min(FIEMAP_EXTENTS)];
        for e in got {
            if e.flags & FIEMAP_EXTENT_ELSEWHERE != 0 {
                return Err(format!("{}: the filesystem reports bytes {}..{} not at a fixed place on the disk (FIEMAP flags {:#x})", name, e.logical, e.logical + e.length, e.flags));
            }
            if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
                return Err(format!(
                    "{}: bytes {}..{} are preallocated but unwritten: the filesystem reads them as zeros, whatever the server wrote there",
                    name,
                    e.logical,
                    e.logical + e.length
                ));
            }
            if e.logical % 512 != 0 || e.physical % 512 != 0 {
                return Err(format!("{}: an extent not on sector boundaries (byte {} at {})", name, e.logical, e.physical));
            }
            out.push(Extent { file_sector: e.logical / 512, lba: part_start_lba + e.physical / 512, sectors: e.length.div_ceil(512) });
        }
        match got.last() {
            Some(l) if l.flags & FIEMAP_EXTENT_LAST == 0 => start = l.logical + l.length,
            _ => return Ok((out, "FIEMAP")),
        }
    }
}

fn fibmap(f: &File, name: &str, block: u64) -> Result<u64, String> {
    let mut x = libc::c_int::try_from(block).map_err(|_| format!("{}: too large for FIBMAP", name))?;
    // SAFETY: FIBMAP reads and writes one int through the pointer, which points at a live int.
    if unsafe { libc::ioctl(f.as_raw_fd(), FIBMAP as _, &mut x as *mut libc::c_int) } < 0 {
        return Err(format!("{}: FIBMAP: {}", name, io::Error::last_os_error()));
    }
    Ok(x as u32 as u64)
}

/// FIBMAP for a filesystem without FIEMAP (vfat and exfat have none in Linux 6.1). FIBMAP maps
/// one block (FIGETBSZ: a sector on FAT) per call; a 20 GiB image would take 40 million calls.
/// So it goes by the filesystem's statfs block, the cluster on FAT and exFAT, which is
/// contiguous on the disk: per cluster it maps the first and the last block, and block by block
/// only where those two are not a cluster apart.
fn fibmap_extents(f: &File, name: &str, part_start_lba: u64) -> Result<Vec<Extent>, String> {
    let mut block_bytes: libc::c_int = 0;
    // SAFETY: FIGETBSZ writes one int through the pointer, which points at a live int.
    if unsafe { libc::ioctl(f.as_raw_fd(), FIGETBSZ as _, &mut block_bytes as *mut libc::c_int) } < 0 || block_bytes < 512 || block_bytes % 512 != 0 {
        return Err(format!("{}: the filesystem gives neither FIEMAP nor a block size for FIBMAP", name));
    }
    let block_bytes = block_bytes as u64;
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite; the pointer is live.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs through the pointer, which points at `st`.
    let cluster_bytes = match unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } {
        0 if st.f_bsize as u64 % block_bytes == 0 && (st.f_bsize as u64) <= 1 << 20 && st.f_bsize > 0 => st.f_bsize as u64,
        _ => block_bytes,
    };
    let per_cluster = cluster_bytes / block_bytes;
    let block_sectors = block_bytes / 512;
    let size = f.metadata().map_err(|e| format!("{}: {}", name, e))?.len();
    let blocks = size.div_ceil(block_bytes);
    let mut out: Vec<Extent> = Vec::new();
    let mut push = |block: u64, count: u64, physical: u64| {
        let (file_sector, lba, sectors) = (block * block_sectors, part_start_lba + physical * block_sectors, count * block_sectors);
        match out.last_mut() {
            Some(l) if l.file_sector + l.sectors == file_sector && l.lba + l.sectors == lba => l.sectors += sectors,
            _ => out.push(Extent { file_sector, lba, sectors }),
        }
    };
    let mut first = 0;
    while first < blocks {
        let last = (first + per_cluster).min(blocks) - 1;
        let a = fibmap(f, name, first)?;
        let b = if last == first { a } else { fibmap(f, name, last)? };
        if a != 0 && b == a + (last - first) {
            push(first, last - first + 1, a);
        } else {
            for block in first..=last {
                // 0: a hole (no block), which the comparison reports.
                match fibmap(f, name, block)? {
                    0 => {}
                    p => push(block, 1, p),
                }
            }
        }
        first = last + 1;
    }
    Ok(out)
}

/// Whether `f` is the table's `layer`: a regular file on the host partition, of the table's
/// size, at exactly the table's sectors. Ok: how the extents were found.
fn check_file(f: &File, layer: &vboot::handoff::Layer, info: &ServerInfo) -> Result<&'static str, String> {
    let name = &layer.path;
    let md = f.metadata().map_err(|e| format!("{}: {}", name, e))?;
    if !md.file_type().is_file() {
        return Err(format!("the descriptor given for {} is not a regular file", name));
    }
    if majmin(md.dev()) != info.partition {
        return Err(format!(
            "the file given for {} is on device {}, not on the host partition ({}): the image must be the file vboot booted, on the host partition",
            name,
            majmin(md.dev()),
            info.partition
        ));
    }
    if md.len() != layer.size_bytes {
        return Err(format!("the file given for {} is {} bytes, but {} at boot: not the same file, or it changed since", name, md.len(), layer.size_bytes));
    }
    let (found, how) = filesystem_extents(f, name, info.partition_start_lba)?;
    pivot::compare_extents(&layer.extents, &found, layer.size_bytes).map_err(|e| {
        format!("the file given for {} is not where the hand-off table says ({}): not the same file, or it was moved since boot", name, e)
    })?;
    Ok(how)
}

/// Forget what the page cache holds of `f`: before the pivot it may hold pages read through the
/// filesystem while the server wrote the raw sectors underneath.
fn drop_cached_pages(f: &File) {
    // SAFETY: posix_fadvise takes no pointer; a bad descriptor is an error, not undefined behaviour.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// A pivot whose files are being checked, on a thread, while the server goes on serving.
struct Pending {
    stream: UnixStream,
    files: Vec<File>,
    check: std::thread::JoinHandle<Result<(&'static str, u128), String>>,
}

/// The server's side of the pivot: the control socket, and a pivot being checked.
pub struct Controller {
    listener: UnixListener,
    info: ServerInfo,
    /// The check thread writes a byte into `done_tx` when it ends; `done_rx` is watched.
    done_rx: UnixStream,
    done_tx: UnixStream,
    pending: Option<Pending>,
}

impl Controller {
    pub fn new(listener: UnixListener, info: ServerInfo) -> Result<Controller, String> {
        let (done_rx, done_tx) = UnixStream::pair().map_err(|e| format!("socketpair: {}", e))?;
        done_rx.set_nonblocking(true).map_err(|e| format!("socketpair: {}", e))?;
        Ok(Controller { listener, info, done_rx, done_tx, pending: None })
    }

    /// What the serving loop watches (nbd::Control).
    pub fn fds(&self) -> Vec<RawFd> {
        vec![self.listener.as_raw_fd(), self.done_rx.as_raw_fd()]
    }

    /// Runs between two NBD requests (the ones after it wait in the socket), so the disk is idle
    /// throughout: a finished check goes on to the pivot; a new client gets the `hello`, and its
    /// files are checked on a thread while the server serves.
    pub fn handle(&mut self, disk: &mut VirtualDisk, log: &mut dyn FnMut(String)) {
        // The thread's byte comes just before it returns: once it is here, join waits for no
        // more than that return.
        let mut byte = [0u8; 16];
        let mut done = false;
        while let Ok(n @ 1..) = self.done_rx.read(&mut byte) {
            done |= n > 0;
        }
        if self.pending.is_some() && (done || self.pending.as_ref().is_some_and(|p| p.check.is_finished())) {
            let p = self.pending.take().unwrap();
            let mut stream = p.stream;
            let checked = p.check.join().unwrap_or_else(|_| Err(String::from("the check of the files failed")));
            if let Err(m) = checked.and_then(|(how, ms)| finish(&mut stream, p.files, how, ms, &self.info, disk, log)) {
                refuse(&mut stream, &m, log);
            }
        }
        while let Ok((mut stream, _)) = self.listener.accept() {
            if self.pending.is_some() {
                refuse(&mut stream, &format!("another pivot of {} is being checked", self.info.device), log);
                continue;
            }
            match start(&mut stream, &self.info, disk) {
                Ok(None) => {}
                Ok(Some(files)) => match self.spawn_check(&files, disk) {
                    Ok(check) => self.pending = Some(Pending { stream, files, check }),
                    Err(m) => refuse(&mut stream, &m, log),
                },
                Err(m) => refuse(&mut stream, &m, log),
            }
        }
    }

    fn spawn_check(&self, files: &[File], disk: &VirtualDisk) -> Result<std::thread::JoinHandle<Result<(&'static str, u128), String>>, String> {
        let files = files.iter().map(|f| f.try_clone()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("dup: {}", e))?;
        let layers = disk.layers.clone();
        let info = self.info.clone();
        let mut done = self.done_tx.try_clone().map_err(|e| format!("dup: {}", e))?;
        std::thread::Builder::new()
            .name(String::from("pivot-check"))
            .spawn(move || {
                let started = std::time::Instant::now();
                let mut how = "";
                let mut result = Ok(());
                for (f, l) in files.iter().zip(&layers) {
                    match check_file(f, l, &info) {
                        Ok(h) => how = h,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let _ = done.write_all(b"x");
                result.map(|_| (how, started.elapsed().as_millis()))
            })
            .map_err(|e| format!("starting the check: {}", e))
    }
}

fn refuse(s: &mut UnixStream, m: &str, log: &mut dyn FnMut(String)) {
    log(format!("pivot refused: {}", m));
    let _ = send(s, &format!("refused\t{}\n", m.replace(['\t', '\n'], " ")), &[]);
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred (len bytes) through the pointer, which points at `cred`.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut libc::ucred as *mut libc::c_void, &mut len) };
    (r == 0).then_some(cred.uid)
}

/// The `hello`, and the client's request: the files to check, or nothing (a client that only
/// asked who the server is).
fn start(s: &mut UnixStream, info: &ServerInfo, disk: &VirtualDisk) -> Result<Option<Vec<File>>, String> {
    s.set_nonblocking(false).and_then(|_| s.set_read_timeout(Some(REPLY_TIMEOUT))).map_err(|e| e.to_string())?;
    if peer_uid(s) != Some(0) {
        return Err(String::from("only root may pivot the server"));
    }
    let hello = Hello {
        device: info.device.clone(),
        partition: info.partition.clone(),
        pivoted: disk.pivoted(),
        writes: disk.writes_files(),
        layers: disk.layers.iter().map(|l| l.path.clone()).collect(),
    };
    send(s, &hello.encode(), &[]).map_err(|e| format!("the client went away: {}", e))?;
    let (line, files) = match receive(s) {
        Ok(m) => m,
        // A client that only asked who we are (another server's client looking for its own).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            return Err(format!("the client sent no request within {} s", REPLY_TIMEOUT.as_secs()))
        }
        Err(e) => return Err(format!("reading the request: {}", e)),
    };
    if line != "pivot" {
        return Err(format!("unexpected request {:?}", line));
    }
    if disk.pivoted() {
        return Err(format!("{} already serves {} through the host filesystem (pivoted before)", info.device, disk.layers[0].path));
    }
    if files.len() != disk.layers.len() {
        return Err(format!("{} files given for a chain of {}", files.len(), disk.layers.len()));
    }
    Ok(Some(files))
}

/// After the check passed (`how` gave the extents, in `checked_ms`): the pivot itself. The NBD
/// requests wait from here to the end.
fn finish(s: &mut UnixStream, mut files: Vec<File>, how: &str, checked_ms: u128, info: &ServerInfo, disk: &mut VirtualDisk, log: &mut dyn FnMut(String)) -> Result<(), String> {
    // Make what was written to the host disk durable before anything reads the files.
    disk.flush_host()?;
    if disk.writes_files() {
        send(s, "remount\n", &[]).map_err(|e| format!("the client went away: {}", e))?;
        let (line, reopened) = receive(s).map_err(|e| format!("no read-write files from the client within {} s ({}); serving from the host disk again", REPLY_TIMEOUT.as_secs(), e))?;
        match line.as_str() {
            "files" if reopened.len() == files.len() => {}
            "abort" => return Err(String::from("the client gave up (it could not remount the filesystem read-write); serving from the host disk again")),
            _ => return Err(format!("unexpected answer {:?} with {} descriptors", line, reopened.len())),
        }
        // The same files, the leaf read-write (and every other file the leaf's layer may consist
        // of, a split VMDK's extents, where it could be opened so): those are checked again.
        for (i, (new, old)) in reopened.iter().zip(&files).enumerate() {
            let name = &disk.layers[i].path;
            let (a, b) = (new.metadata().map_err(|e| format!("{}: {}", name, e))?, old.metadata().map_err(|e| format!("{}: {}", name, e))?);
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err(format!("the file given again for {} is not the file checked before", name));
            }
            // SAFETY: F_GETFL takes no argument pointer.
            let read_write = unsafe { libc::fcntl(new.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDWR;
            if i == 0 && !read_write {
                return Err(format!("the file given for {} is not open read-write", name));
            }
            if read_write {
                check_file(new, &disk.layers[i], info)?;
            }
        }
        files = reopened;
    }
    for f in &files {
        drop_cached_pages(f);
    }
    disk.pivot(files)?;
    let what = format!(
        "{} now serves {} through the host filesystem ({}; extents checked with {} in {} ms); the host disk is closed",
        info.device,
        disk.layers.iter().map(|l| l.path.as_str()).collect::<Vec<_>>().join(" <- "),
        if disk.writes_files() { "the leaf read-write" } else { "read-only" },
        how,
        checked_ms
    );
    log(what.clone());
    send(s, &format!("pivoted\t{}\n", what), &[]).map_err(|e| format!("the client went away after the pivot: {}", e))
}

/// A server that answered: its socket and what it said.
struct Peer {
    stream: UnixStream,
    hello: Hello,
}

fn connect(device: &str) -> Option<Peer> {
    let addr = SocketAddr::from_abstract_name(pivot::socket_name(device).as_bytes()).ok()?;
    let mut stream = UnixStream::connect_addr(&addr).ok()?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok()?;
    let (line, _) = receive(&mut stream).ok()?;
    if let Some(why) = line.strip_prefix("refused\t") {
        // Not root, or a pivot of it already being checked.
        eprintln!("vboot-attach: {}: {}", device, why);
        return None;
    }
    Some(Peer { stream, hello: Hello::decode(&line)? })
}

/// /dev/nbdN of every attached NBD device.
fn attached_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("nbd") && Path::new(&format!("/sys/block/{}/pid", n)).exists()).collect())
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|n| format!("/dev/{}", n)).collect()
}

/// `mount -o remount,rw` (or `ro`) of `mount`, keeping its other per-mount flags, through `point`
/// (its directory, opened before the server stopped serving: /proc/self/fd/N needs no lookup on
/// the root filesystem, which may be on the NBD device the server holds). A system call, not the
/// mount program, for the same reason.
fn remount(mount: &Mount, point: &File, read_write: bool) -> Result<(), String> {
    let mut flags = libc::MS_REMOUNT;
    if !read_write {
        flags |= libc::MS_RDONLY;
    }
    for o in &mount.options {
        flags |= match o.as_str() {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "sync" => libc::MS_SYNCHRONOUS,
            _ => 0,
        };
    }
    let target = CString::new(format!("/proc/self/fd/{}", point.as_raw_fd())).map_err(|_| String::from("a NUL in a number"))?;
    // SAFETY: `target` is a NUL-terminated string that lives across the call; source, type and
    // data may be null for MS_REMOUNT.
    let r = unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if r < 0 {
        return Err(format!("remounting {} {}: {}", mount.point, if read_write { "read-write" } else { "read-only" }, io::Error::last_os_error()));
    }
    Ok(())
}

/// `vboot-attach --pivot FILE [--device DEVICE]`.
pub fn pivot(file: &Path, device: Option<&str>) -> Result<(), String> {
    let canonical = std::fs::canonicalize(file).map_err(|e| format!("{}: {}", file.display(), e))?;
    let md = std::fs::metadata(&canonical).map_err(|e| format!("{}: {}", file.display(), e))?;
    if !md.file_type().is_file() {
        return Err(format!("{} is not a regular file: give the image file through the mounted host partition", file.display()));
    }
    let dev = majmin(md.dev());
    let path = canonical.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {}", e))?;
    let mount = pivot::mount_of(&mountinfo, &dev, &path).ok_or_else(|| format!("{} is on device {}, which /proc/self/mountinfo does not list", path, dev))?;
    let in_fs = pivot::path_in_filesystem(&mount, &path).unwrap_or_else(|| path.clone());

    // From the server's `hello` until it has the request, and from its `remount` until its
    // answer, it serves no NBD request: nothing of this process may have to be read from the NBD
    // device meanwhile (the program, with the root filesystem on it): every page locked in now,
    // while it still serves; the mount point and the leaf opened before too.
    // SAFETY: mlockall takes no pointer.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        eprintln!("vboot-attach: warning: mlockall: {}", io::Error::last_os_error());
    }
    let point = File::open(&mount.point).map_err(|e| format!("{}: {}", mount.point, e))?;
    let leaf = File::open(&canonical).map_err(|e| format!("{}: {}", path, e))?;
    let devices = match device {
        Some(d) => vec![d.to_string()],
        None => attached_devices(),
    };
    let peers: Vec<Peer> = devices.iter().filter_map(|d| connect(d)).collect();
    if peers.is_empty() {
        return Err(match device {
            Some(d) => format!("no vboot-attach server answers for {} (is it attached, by this version of vboot-attach?)", d),
            None => String::from("no vboot-attach server is running (no /dev/nbdN answers on its control socket): attach the drive first"),
        });
    }
    let served: Vec<String> = peers.iter().map(|p| format!("{} {} on {}", p.hello.device, p.hello.layers[0], p.hello.partition)).collect();
    let mut on_partition: Vec<Peer> = peers.into_iter().filter(|p| p.hello.partition == dev).collect();
    if on_partition.len() > 1 {
        on_partition.retain(|p| pivot::same_path(&p.hello.layers[0], &in_fs));
    }
    let mut peer = match on_partition.len() {
        1 => on_partition.pop().unwrap(),
        0 => {
            return Err(format!(
                "{} is on device {}, not on the host partition of a served drive ({}): give the image vboot booted, through its host partition",
                path,
                dev,
                served.join("; ")
            ))
        }
        _ => return Err(format!("several servers serve images on device {}: say which with --device", dev)),
    };
    let h = peer.hello.clone();
    if h.pivoted {
        return Err(format!("{} already serves {} through the host filesystem (pivoted before)", h.device, h.layers[0]));
    }
    let direct = crate::mapped::direct_devices(&h.device);
    if !direct.is_empty() {
        return Err(format!(
            "{} was attached with --direct: its device-mapper devices ({}) hold the host partition, so it cannot be mounted and the server cannot pivot; attach without --direct to pivot",
            h.device,
            direct.join(", ")
        ));
    }
    if !pivot::same_path(&h.layers[0], &in_fs) {
        eprintln!("vboot-attach: warning: {} serves {}, not {}: the server checks the file's sectors", h.device, h.layers[0], in_fs);
    }
    if h.writes && mount.read_write {
        return Err(format!(
            "{} is mounted read-write on {} while {} still writes the image's sectors on the disk: remount it read-only \
             (mount -o remount,ro {}) and run --pivot again; it remounts it read-write itself once the server has switched",
            dev, mount.point, h.device, mount.point
        ));
    }
    // The files, read-only: the leaf (opened before), then the table's other files (parents, a
    // split VMDK's extents) by the table's paths through the same mount, looked up from the
    // mount point's descriptor (no lookup on the root filesystem while the server waits).
    let via_point = Mount { point: format!("/proc/self/fd/{}", point.as_raw_fd()), ..mount.clone() };
    let mut paths = vec![path.clone()];
    let mut files = vec![leaf];
    for l in &h.layers[1..] {
        let outside = || format!("{} is outside {} (a mount of {} only)", l, mount.point, mount.root);
        let (shown, p) = (pivot::path_through_mount(&mount, l).ok_or_else(outside)?, pivot::path_through_mount(&via_point, l).ok_or_else(outside)?);
        files.push(File::open(&p).map_err(|e| format!("{} ({}): {}", l, shown, e))?);
        paths.push(shown);
    }
    let s = &mut peer.stream;
    let io = |e: io::Error| format!("the server of {} went away: {}", h.device, e);
    if let Err(e) = send(s, "pivot\n", &files.iter().collect::<Vec<_>>()) {
        // The server may have said why it closed.
        return Err(match receive(s) {
            Ok((line, _)) if line.starts_with("refused\t") => format!("{}: {}", h.device, &line[8..]),
            _ => io(e),
        });
    }
    // The check reads every file's extents: minutes for a big image on a filesystem without FIEMAP.
    let _ = s.set_read_timeout(Some(CHECK_TIMEOUT));
    let (line, _) = receive(s).map_err(io)?;
    let _ = s.set_read_timeout(Some(REPLY_TIMEOUT));
    let mut remounted = false;
    let (line, _) = if line == "remount" {
        if let Err(e) = remount(&mount, &point, true) {
            let _ = send(s, "abort\n", &[]);
            return Err(format!("{}; the server serves from the host disk again", e));
        }
        remounted = true;
        // The leaf read-write; the other files too where they can be (a split VMDK leaf's extents
        // are written; a parent marked read-only stays so, the server never writes parents).
        let mut reopened = Vec::new();
        // Through /proc/self/fd: the same files, and no path lookup.
        for (i, (p, f)) in paths.iter().zip(&files).enumerate() {
            let again = format!("/proc/self/fd/{}", f.as_raw_fd());
            match OpenOptions::new().read(true).write(true).open(&again) {
                Ok(f) => reopened.push(f),
                Err(_) if i > 0 => reopened.push(File::open(&again).map_err(|e| format!("{}: {}", p, e))?),
                Err(e) => {
                    let _ = send(s, "abort\n", &[]);
                    let _ = remount(&mount, &point, false);
                    return Err(format!("{} (read-write): {}; remounted read-only again, the server serves from the host disk", p, e));
                }
            }
        }
        match send(s, "files\n", &reopened.iter().collect::<Vec<_>>()).and_then(|_| receive(s)) {
            Ok(m) => m,
            Err(e) => {
                let again = remount(&mount, &point, false).map_or_else(|e| format!("; {}", e), |_| format!("; {} remounted read-only again", mount.point));
                return Err(format!("{}{}", io(e), again));
            }
        }
    } else {
        (line, Vec::new())
    };
    match line.split_once('\t') {
        Some(("pivoted", what)) => {
            eprintln!("vboot-attach: {}", what);
            if !h.writes {
                eprintln!("vboot-attach: the server does not write the image; {} may be remounted read-write", mount.point);
            }
            Ok(())
        }
        Some(("refused", why)) => {
            if remounted {
                let again = remount(&mount, &point, false).map_or_else(|e| format!("; {}", e), |_| format!("; {} remounted read-only again", mount.point));
                return Err(format!("{}: {}{}", h.device, why, again));
            }
            Err(format!("{}: {}", h.device, why))
        }
        _ => Err(format!("the server of {} answered {:?}", h.device, line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// The FIEMAP plumbing (the structure's layout, the loop past one call's 256 extents, the
    /// partition offset) against FIBMAP on the same file: 600 blocks with holes between them, on
    /// whatever filesystem the temporary directory is. Skipped where the filesystem has no FIEMAP
    /// or FIBMAP is not allowed (not root).
    #[test]
    fn fiemap_and_fibmap_agree_on_a_file_with_holes() {
        let path = std::env::temp_dir().join(format!("vboot-attach-fiemap-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        for i in 0..600u64 {
            f.write_all_at(&[0x5A; 4096], i * 8192).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let result = filesystem_extents(&f, "t", 1000).and_then(|(a, how)| Ok((a, how, fibmap_extents(&f, "t", 1000)?)));
        let _ = std::fs::remove_file(&path);
        let (a, how, b) = match result {
            Ok(r) if r.1 == "FIEMAP" => r,
            Ok(_) => return eprintln!("skipped: the temporary directory's filesystem has no FIEMAP"),
            Err(e) => return eprintln!("skipped: {}", e),
        };
        assert_eq!(how, "FIEMAP");
        let sectors = 600 * 16;
        let (a, b) = (pivot::normalise(&a, sectors), pivot::normalise(&b, sectors));
        assert_eq!(a, b);
        assert_eq!(a.len(), 600, "one extent per block, holes between: {:?}", &a[..3]);
        assert!(a.iter().enumerate().all(|(i, e)| e.file_sector == i as u64 * 16 && e.sectors == 8 && e.lba >= 1000));
    }
}

/// The server's side of the pivot end to end, without QEMU: a VirtualDisk on a stand-in host disk
/// (a sparse file holding the image at the very sectors FIEMAP gives for the image file in the
/// temporary directory), the Controller in the NBD serving loop, and a client thread speaking the
/// protocol as `--pivot` does (minus the remount). Skipped where the temporary directory's
/// filesystem has no FIEMAP or the test does not run as root (SO_PEERCRED).
#[cfg(test)]
mod server_tests {
    use super::*;
    use crate::nbd::{self, Control};
    use std::os::unix::fs::FileExt;
    use vboot::handoff::{Drive, DriveKind, Filesystem, HostDisk, HostPartition, HostScheme, Layer, LayerFormat, WriteMode};
    use vboot::image::create::{create, CreateOptions, Variant};
    use vboot::image::{ImageError, MemFile};

    fn request(command: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&nbd::REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&command.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    fn reply(s: &mut UnixStream, data_len: usize) -> (u32, Vec<u8>) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = vec![0u8; if err == 0 { data_len } else { 0 }];
        s.read_exact(&mut data).unwrap();
        (err, data)
    }

    #[test]
    fn a_pivot_through_the_control_socket_while_serving() {
        // SAFETY: geteuid takes no argument and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return eprintln!("skipped: not root");
        }
        let tmp = std::env::temp_dir();
        let tag = std::process::id();
        let mut m = MemFile::new("/vm/d.vhd", Vec::new());
        let opts = CreateOptions { size_bytes: 8 << 20, reserve_bytes: 4 << 20, exact_size: true, seed: 3, now_unix: 1_700_000_000 };
        create(Variant::VhdDynamic, &mut m, "d.vhd", &opts, None, &mut |_| Err(ImageError::Invalid { detail: "one file".into() })).unwrap();
        let image = tmp.join(format!("vboot-attach-pivot-image-{}", tag));
        std::fs::write(&image, &m.bytes).unwrap();
        let decoy = tmp.join(format!("vboot-attach-pivot-decoy-{}", tag));
        std::fs::write(&decoy, &m.bytes).unwrap();
        let f = File::open(&image).unwrap();
        let extents = match filesystem_extents(&f, "image", 0) {
            Ok((e, "FIEMAP")) => e,
            _ => {
                let _ = std::fs::remove_file(&image);
                let _ = std::fs::remove_file(&decoy);
                return eprintln!("skipped: no FIEMAP in the temporary directory");
            }
        };
        // The stand-in host disk: the image's bytes at the sectors the filesystem gave.
        let host_path = tmp.join(format!("vboot-attach-pivot-host-{}", tag));
        let host = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&host_path).unwrap();
        for e in &extents {
            let start = (e.file_sector * 512) as usize;
            let end = (start + (e.sectors * 512) as usize).min(m.bytes.len());
            host.write_all_at(&m.bytes[start..end], e.lba * 512).unwrap();
        }
        host.set_len(extents.iter().map(|e| (e.lba + e.sectors) * 512).max().unwrap()).unwrap();
        let drive = Drive {
            bios_number: 0x80,
            kind: DriveKind::HardDisk,
            write_mode: WriteMode::Normal,
            virtual_sectors: (8 << 20) / 512,
            host: HostDisk { bios_drive: 0x80, scheme: HostScheme::Mbr, mbr_signature: 1, disk_guid: [0; 16], sectors: u64::MAX / 1024 },
            partition: HostPartition { number: 1, start_lba: 0, sectors: u64::MAX / 1024, type_byte: 0x83, guid: [0; 16] },
            filesystem: Filesystem::Ext,
            overlay: None,
            parent_dir: None,
            layers: vec![Layer { format: LayerFormat::Vhd, size_bytes: m.bytes.len() as u64, path: "/vm/d.vhd".into(), extents }],
        };
        let host_rw = std::fs::OpenOptions::new().read(true).write(true).open(&host_path).unwrap();
        let mut disk = crate::vdisk::VirtualDisk::open(&drive, host_rw, false).unwrap();
        let device = format!("/dev/nbdtest{}", tag);
        let info = ServerInfo { device: device.clone(), partition: majmin(f.metadata().unwrap().dev()), partition_start_lba: 0 };
        let mut controller = Controller::new(listen(&device).unwrap(), info).unwrap();
        let (mut ours, mut kernel) = UnixStream::pair().unwrap();
        let (image2, decoy2, dev2) = (image.clone(), decoy.clone(), device.clone());
        let client = std::thread::spawn(move || {
            // A write before the pivot, through the host disk.
            let mut w = request(nbd::CMD_WRITE, 1, 3 << 20, 4096);
            w.extend_from_slice(&[0xA1; 4096]);
            kernel.write_all(&w).unwrap();
            assert_eq!(reply(&mut kernel, 0).0, 0);
            // The decoy (same bytes, other sectors) is refused.
            let mut p = connect(&dev2).expect("the server answers");
            assert!(p.hello.writes && !p.hello.pivoted && p.hello.layers == ["/vm/d.vhd"]);
            send(&mut p.stream, "pivot\n", &[&File::open(&decoy2).unwrap()]).unwrap();
            let (line, _) = receive(&mut p.stream).unwrap();
            assert!(line.starts_with("refused\tthe file given for /vm/d.vhd is not where the hand-off table says"), "{}", line);
            // The image: checked, then `remount`, then the files again, read-write.
            let mut p = connect(&dev2).expect("the server answers");
            let ro = File::open(&image2).unwrap();
            send(&mut p.stream, "pivot\n", &[&ro]).unwrap();
            assert_eq!(receive(&mut p.stream).unwrap().0, "remount");
            let rw = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/self/fd/{}", ro.as_raw_fd())).unwrap();
            send(&mut p.stream, "files\n", &[&rw]).unwrap();
            let (line, _) = receive(&mut p.stream).unwrap();
            assert!(line.starts_with(&format!("pivoted\t{} now serves /vm/d.vhd through the host filesystem (the leaf read-write; extents checked with FIEMAP in ", dev2)), "{}", line);
            // After it a write lands in the file and reads back (the stand-in host disk is not
            // the file's device, so what was written before the pivot is not in the file: the
            // QEMU tests check that part, tests/tests/attach.rs).
            let mut w = request(nbd::CMD_WRITE, 3, (3 << 20) + 4096, 4096);
            w.extend_from_slice(&[0xB2; 4096]);
            kernel.write_all(&w).unwrap();
            assert_eq!(reply(&mut kernel, 0).0, 0);
            kernel.write_all(&request(nbd::CMD_READ, 2, (3 << 20) + 4096, 4096)).unwrap();
            let (err, data) = reply(&mut kernel, 4096);
            assert!(err == 0 && data == [0xB2; 4096], "the write after the pivot does not read back");
            // Twice: refused.
            let mut p = connect(&dev2).expect("the server answers");
            assert!(p.hello.pivoted);
            send(&mut p.stream, "pivot\n", &[&File::open(&image2).unwrap()]).unwrap();
            assert!(receive(&mut p.stream).unwrap().0.contains("pivoted before"));
            kernel.write_all(&request(nbd::CMD_DISC, 4, 0, 0)).unwrap();
        });
        let fds = controller.fds();
        let mut log = Vec::new();
        let mut handle = |d: &mut crate::vdisk::VirtualDisk| controller.handle(d, &mut |m| log.push(m));
        let stats = nbd::serve(&mut ours, &mut disk, &mut |_| {}, Some(Control { fds, handle: &mut handle })).unwrap();
        client.join().unwrap();
        assert_eq!(stats.writes, 2);
        drop(disk);
        // The second write is in the file, not on the stand-in host disk.
        let after = std::fs::read(&image).unwrap();
        assert_eq!(after.len(), m.bytes.len(), "the file grew");
        assert!(after.windows(4096).any(|w| w == [0xB2; 4096]), "the write after the pivot is not in the file");
        // The stand-in host disk is sparse and as large as the temporary filesystem's device:
        // only the image's sectors on it.
        let host_after: Vec<u8> = drive.layers[0]
            .extents
            .iter()
            .flat_map(|e| {
                let mut b = vec![0u8; (e.sectors * 512) as usize];
                host.read_exact_at(&mut b, e.lba * 512).unwrap();
                b
            })
            .collect();
        assert!(host_after.windows(4096).any(|w| w == [0xA1; 4096]), "the write before the pivot is not on the host disk");
        assert!(!host_after.windows(4096).any(|w| w == [0xB2; 4096]), "the write after the pivot reached the host disk");
        assert!(!after.windows(4096).any(|w| w == [0xA1; 4096]), "the write before the pivot reached the file");
        assert!(log.iter().any(|l| l.contains("pivot refused: the file given for /vm/d.vhd")), "{:?}", log);
        for p in [&image, &decoy, &host_path] {
            let _ = std::fs::remove_file(p);
        }
    }
}
