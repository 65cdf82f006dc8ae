//! The NBD transmission phase, server side, as the kernel's nbd driver speaks it after
//! NBD_SET_SOCK (no handshake: the size and flags go through ioctls), and those ioctls.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const FLAG_HAS_FLAGS: u64 = 1 << 0;
pub const FLAG_READ_ONLY: u64 = 1 << 1;
pub const FLAG_SEND_FLUSH: u64 = 1 << 2;
/// The kernel never asks for more than this in one request (max_sectors); refuse beyond it
/// rather than allocate what a broken peer asks.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;

const EIO: u32 = 5;
const EPERM: u32 = 1;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// What the server serves.
pub trait Backend {
    fn size_bytes(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Errors are errno values for the reply, and a message for the console.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), (u32, String)>;
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), (u32, String)>;
    fn flush(&mut self) -> Result<(), (u32, String)>;
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
}

/// The reply's header, then its data straight from the caller's buffer: copying up to 32 MiB
/// into one buffer first costs more than a second write (docs/benchmarks.md, "Linux over
/// vboot-attach").
fn reply<S: Write>(s: &mut S, error: u32, handle: &[u8; 8], data: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    header[4..8].copy_from_slice(&error.to_be_bytes());
    header[8..16].copy_from_slice(handle);
    s.write_all(&header)?;
    if !data.is_empty() {
        s.write_all(data)?;
    }
    Ok(())
}

/// More descriptors the server watches between requests (the pivot's control socket and its
/// check thread's notice), and what to do when one is readable: `handle` runs between two
/// requests, so the request before has been answered and the next ones wait in the socket until
/// it returns.
pub struct Control<'a, B: ?Sized> {
    pub fds: Vec<RawFd>,
    pub handle: &'a mut dyn FnMut(&mut B),
}

/// Wait until `sock` or one of `control` is readable; true for `control`.
fn control_ready(sock: RawFd, control: &[RawFd]) -> io::Result<bool> {
    let mut fds: Vec<libc::pollfd> = control.iter().chain([&sock]).map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `fds` is a live array of pollfd structures, and its length is passed.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r >= 0 {
            return Ok(fds[..control.len()].iter().any(|p| p.revents & libc::POLLIN != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Serve requests until NBD_CMD_DISC (flushing first) or the peer closes the socket. Backend
/// errors are answered with an errno and reported through `log`; only socket errors end it.
pub fn serve<S: Read + Write + AsRawFd, B: Backend + ?Sized>(
    s: &mut S,
    disk: &mut B,
    log: &mut dyn FnMut(String),
    mut control: Option<Control<B>>,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    // One buffer for every request's data, grown to the largest request seen.
    let mut data: Vec<u8> = Vec::new();
    loop {
        if let Some(c) = control.as_mut() {
            if control_ready(s.as_raw_fd(), &c.fds)? {
                (c.handle)(disk);
                continue;
            }
        }
        let mut req = [0u8; 28];
        match s.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // The kernel went away without a disconnect: still make everything durable.
                if let Err((_, m)) = disk.flush() {
                    log(m);
                }
                return Ok(stats);
            }
            Err(e) => return Err(e),
        }
        let magic = u32::from_be_bytes(req[0..4].try_into().unwrap());
        if magic != REQUEST_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("NBD request with bad magic {:#010x}", magic)));
        }
        let command = u16::from_be_bytes(req[6..8].try_into().unwrap());
        let handle: [u8; 8] = req[8..16].try_into().unwrap();
        let offset = u64::from_be_bytes(req[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(req[24..28].try_into().unwrap());
        let in_range = offset.checked_add(len as u64).is_some_and(|end| end <= disk.size_bytes());
        let fail = |stats: &mut Stats, code: u32, msg: String, log: &mut dyn FnMut(String)| {
            stats.errors += 1;
            log(msg);
            code
        };
        match command {
            CMD_READ => {
                stats.reads += 1;
                if !in_range || len > MAX_REQUEST_BYTES {
                    let e = fail(&mut stats, EINVAL, format!("read of {} bytes at {} is past the disk's end", len, offset), log);
                    reply(s, e, &handle, &[])?;
                    continue;
                }
                data.resize(len as usize, 0);
                let buf = &mut data[..];
                match disk.read(offset, buf) {
                    Ok(()) => reply(s, 0, &handle, buf)?,
                    Err((code, m)) => {
                        let e = fail(&mut stats, code, m, log);
                        reply(s, e, &handle, &[])?
                    }
                }
            }
            CMD_WRITE => {
                stats.writes += 1;
                if len > MAX_REQUEST_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("NBD write of {} bytes", len)));
                }
                // The payload follows the request whatever we answer.
                data.resize(len as usize, 0);
                let buf = &mut data[..];
                s.read_exact(buf)?;
                let code = if disk.read_only() {
                    fail(&mut stats, EPERM, String::from("write to a read-only disk refused"), log)
                } else if !in_range {
                    fail(&mut stats, ENOSPC, format!("write of {} bytes at {} is past the disk's end", len, offset), log)
                } else {
                    match disk.write(offset, buf) {
                        Ok(()) => 0,
                        Err((code, m)) => fail(&mut stats, code, m, log),
                    }
                };
                reply(s, code, &handle, &[])?;
            }
            CMD_FLUSH => {
                stats.flushes += 1;
                let code = match disk.flush() {
                    Ok(()) => 0,
                    Err((code, m)) => fail(&mut stats, code, m, log),
                };
                reply(s, code, &handle, &[])?;
            }
            CMD_TRIM => {
                // Discard is advisory: succeed without freeing anything.
                reply(s, 0, &handle, &[])?;
            }
            CMD_DISC => {
                if let Err((_, m)) = disk.flush() {
                    log(m);
                }
                return Ok(stats);
            }
            other => {
                let e = fail(&mut stats, EINVAL, format!("unknown NBD command {}", other), log);
                reply(s, e, &handle, &[])?;
            }
        }
    }
}

/// errno for a failed backend call.
pub fn eio(msg: String) -> (u32, String) {
    (EIO, msg)
}

/// An ioctl request whose argument is an integer, never a pointer: only the ones below exist.
#[derive(Clone, Copy)]
pub struct IntRequest(u64);

// The kernel driver's ioctls (linux/nbd.h: _IO(0xab, n)).
pub const NBD_SET_SOCK: IntRequest = IntRequest(0xab00);
pub const NBD_SET_BLKSIZE: IntRequest = IntRequest(0xab01);
pub const NBD_DO_IT: IntRequest = IntRequest(0xab03);
pub const NBD_CLEAR_SOCK: IntRequest = IntRequest(0xab04);
pub const NBD_CLEAR_QUE: IntRequest = IntRequest(0xab05);
pub const NBD_SET_SIZE_BLOCKS: IntRequest = IntRequest(0xab07);
pub const NBD_DISCONNECT: IntRequest = IntRequest(0xab08);
pub const NBD_SET_FLAGS: IntRequest = IntRequest(0xab0a);
/// linux/fs.h BLKRRPART: re-read the partition table (its argument is ignored).
pub const BLKRRPART: IntRequest = IntRequest(0x125f);

pub fn ioctl(fd: i32, request: IntRequest, arg: u64) -> io::Result<i32> {
    // SAFETY: every IntRequest takes an integer argument, not a pointer, so the kernel reads or
    // writes no memory of ours; a bad `fd` is an error (EBADF), not undefined behaviour.
    let r = unsafe { libc::ioctl(fd, request.0 as _, arg as libc::c_ulong) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    struct Mem {
        bytes: Vec<u8>,
        read_only: bool,
        flushes: u32,
        fail_at: Option<u64>,
    }
    impl Backend for Mem {
        fn size_bytes(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), (u32, String)> {
            if self.fail_at == Some(offset) {
                return Err(eio(String::from("bad sector")));
            }
            buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), (u32, String)> {
            if self.fail_at == Some(offset) {
                return Err((ENOSPC, String::from("no slack left")));
            }
            self.bytes[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), (u32, String)> {
            self.flushes += 1;
            Ok(())
        }
    }

    fn request(command: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&command.to_be_bytes());
        r.extend_from_slice(&handle.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    fn read_reply(s: &mut UnixStream, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), REPLY_MAGIC);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = vec![0u8; if err == 0 { data_len } else { 0 }];
        s.read_exact(&mut data).unwrap();
        (err, u64::from_be_bytes(h[8..16].try_into().unwrap()), data)
    }

    fn run(mem: Mem, client: impl FnOnce(&mut UnixStream) + Send + 'static) -> (Mem, Stats, Vec<String>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || client(&mut b));
        let mut mem = mem;
        let mut logged = Vec::new();
        let stats = serve(&mut a, &mut mem, &mut |m| logged.push(m), None).unwrap();
        t.join().unwrap();
        (mem, stats, logged)
    }

    fn disk(n: usize) -> Mem {
        Mem { bytes: (0..n).map(|i| (i * 7 % 251) as u8).collect(), read_only: false, flushes: 0, fail_at: None }
    }

    #[test]
    fn reads_writes_flush_and_disconnect() {
        let expect: Vec<u8> = disk(8192).bytes[1024..3072].to_vec();
        let (mem, stats, logged) = run(disk(8192), move |c| {
            c.write_all(&request(CMD_READ, 1, 1024, 2048)).unwrap();
            assert_eq!(read_reply(c, 2048), (0, 1, expect));
            let mut w = request(CMD_WRITE, 2, 512, 1024);
            w.extend_from_slice(&[0xAB; 1024]);
            c.write_all(&w).unwrap();
            assert_eq!(read_reply(c, 0), (0, 2, vec![]));
            c.write_all(&request(CMD_READ, 3, 0, 2048)).unwrap();
            let (e, h, data) = read_reply(c, 2048);
            assert_eq!((e, h), (0, 3));
            assert!(data[512..1536].iter().all(|&b| b == 0xAB));
            c.write_all(&request(CMD_FLUSH, 4, 0, 0)).unwrap();
            assert_eq!(read_reply(c, 0), (0, 4, vec![]));
            c.write_all(&request(CMD_TRIM, 5, 0, 512)).unwrap();
            assert_eq!(read_reply(c, 0), (0, 5, vec![]));
            c.write_all(&request(CMD_DISC, 6, 0, 0)).unwrap();
        });
        assert!(mem.bytes[512..1536].iter().all(|&b| b == 0xAB));
        assert_eq!(mem.bytes[511], disk(8192).bytes[511]);
        assert_eq!(mem.flushes, 2, "one FLUSH, and one at disconnect");
        assert_eq!(stats, Stats { reads: 2, writes: 1, flushes: 1, errors: 0 });
        assert!(logged.is_empty());
    }

    #[test]
    fn errors_are_answered_and_the_server_keeps_going() {
        let mut m = disk(4096);
        m.fail_at = Some(2048);
        let (mem, stats, logged) = run(m, |c| {
            c.write_all(&request(CMD_READ, 1, 4000, 512)).unwrap();
            assert_eq!(read_reply(c, 512).0, EINVAL, "past the end");
            c.write_all(&request(CMD_READ, 2, 2048, 512)).unwrap();
            assert_eq!(read_reply(c, 512), (EIO, 2, vec![]));
            let mut w = request(CMD_WRITE, 3, 2048, 512);
            w.extend_from_slice(&[1; 512]);
            c.write_all(&w).unwrap();
            assert_eq!(read_reply(c, 0), (ENOSPC, 3, vec![]));
            let mut w = request(CMD_WRITE, 4, 4096, 512);
            w.extend_from_slice(&[1; 512]);
            c.write_all(&w).unwrap();
            assert_eq!(read_reply(c, 0).0, ENOSPC, "past the end");
            c.write_all(&request(9, 5, 0, 0)).unwrap();
            assert_eq!(read_reply(c, 0).0, EINVAL);
            // Still serving after all that.
            c.write_all(&request(CMD_READ, 6, 0, 512)).unwrap();
            assert_eq!(read_reply(c, 512).0, 0);
            // Closing without NBD_CMD_DISC still flushes.
        });
        assert_eq!(stats.errors, 5);
        assert_eq!(logged.len(), 5);
        assert!(logged.iter().any(|l| l.contains("no slack left")));
        assert_eq!(mem.flushes, 1);
        assert_eq!(mem.bytes, { let mut d = disk(4096); d.fail_at = None; d.bytes });
    }

    /// The control descriptor is served between requests: a request sent after the control
    /// event sees what the handler did, and the server goes on serving.
    #[test]
    fn control_runs_between_requests() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (mut ctl_server, mut ctl_client) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            b.write_all(&request(CMD_READ, 1, 0, 512)).unwrap();
            assert_eq!(read_reply(&mut b, 512).2, disk(4096).bytes[..512].to_vec());
            // The event, then at once the next request: the handler runs first.
            ctl_client.write_all(b"x").unwrap();
            b.write_all(&request(CMD_READ, 2, 0, 512)).unwrap();
            assert_eq!(read_reply(&mut b, 512).2, vec![0xEE; 512]);
            b.write_all(&request(CMD_DISC, 3, 0, 0)).unwrap();
            // Closed only after the server stopped (a closed end would be readable, at EOF).
            ctl_client
        });
        let mut mem = disk(4096);
        let fd = ctl_server.as_raw_fd();
        let mut calls = 0;
        let mut handle = |m: &mut Mem| {
            let mut byte = [0u8; 1];
            ctl_server.read_exact(&mut byte).unwrap();
            m.bytes[..512].fill(0xEE);
            calls += 1;
        };
        let stats = serve(&mut a, &mut mem, &mut |_| {}, Some(Control { fds: vec![fd], handle: &mut handle })).unwrap();
        t.join().unwrap();
        assert_eq!(calls, 1);
        assert_eq!(stats.reads, 2);
    }

    #[test]
    fn read_only_refuses_writes_and_bad_magic_ends() {
        let mut m = disk(4096);
        m.read_only = true;
        let (mem, stats, _) = run(m, |c| {
            let mut w = request(CMD_WRITE, 1, 0, 512);
            w.extend_from_slice(&[1; 512]);
            c.write_all(&w).unwrap();
            assert_eq!(read_reply(c, 0).0, EPERM);
            c.write_all(&request(CMD_DISC, 2, 0, 0)).unwrap();
        });
        assert_eq!(mem.bytes, disk(4096).bytes);
        assert_eq!(stats.errors, 1);

        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut r = request(CMD_READ, 1, 0, 512);
        r[0] ^= 1;
        b.write_all(&r).unwrap();
        let err = serve(&mut a, &mut disk(4096), &mut |_| {}, None).unwrap_err();
        assert!(err.to_string().contains("bad magic"));
    }
}
