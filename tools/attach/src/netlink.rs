//! The kernel's generic-netlink interface to NBD (linux/nbd-netlink.h): NBD_CMD_CONNECT hands the
//! kernel the socket and returns; the kernel serves the device from its own workers. The ioctl
//! interface instead keeps a thread of ours inside NBD_DO_IT, and any signal, even the SIGSTOP
//! that systemd sends to every process before switch-root (`kill(-1, SIGSTOP)`, '@' processes
//! included), ends it and shuts the socket down under a mounted root filesystem.

use std::io;
use std::mem::size_of;

const NETLINK_GENERIC: i32 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;

const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn nested(buf: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    attr(buf, kind | NLA_F_NESTED, inner);
}

/// (type, payload) of each attribute in `b`.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[len.div_ceil(4).saturating_mul(4).min(b.len())..];
    }
    out
}

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    /// Send a generic-netlink request and return the payloads (after the genl header) of its
    /// answers, up to the acknowledgement; a negative acknowledgement is the error.
    fn request(&self, family: u16, cmd: u8, attributes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let len = 16 + 4 + attributes.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
        m.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: command, version 1
        m.extend_from_slice(attributes);
        // SAFETY: a zeroed sockaddr_nl addresses the kernel; the buffer outlives the call.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(self.0, m.as_ptr().cast(), m.len(), 0, (&to as *const libc::sockaddr_nl).cast(), size_of::<libc::sockaddr_nl>() as u32)
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: recv(2) into a buffer we own, of the length given.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                if mlen < 16 || mlen > b.len() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink message"));
                }
                if kind == NLMSG_ERROR {
                    let code = i32::from_ne_bytes(b[16..20].try_into().unwrap());
                    return if code == 0 { Ok(answers) } else { Err(io::Error::from_raw_os_error(-code)) };
                }
                if mlen >= 20 {
                    answers.push(b[20..mlen].to_vec());
                }
                b = &b[mlen.div_ceil(4).saturating_mul(4).min(b.len())..];
            }
        }
    }

    fn nbd_family(&self) -> io::Result<u16> {
        let mut a = Vec::new();
        attr(&mut a, CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        let answers = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &a)?;
        answers
            .iter()
            .flat_map(|p| attrs(p))
            .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no \"nbd\" generic-netlink family"))
    }
}

/// /dev/nbdN's N.
pub fn device_index(device: &str) -> Option<u32> {
    device.strip_prefix("/dev/nbd")?.parse().ok()
}

/// Serve /dev/nbd`index` from `sock_fd`: `size_bytes` in 512-byte blocks, with `server_flags`
/// (the NBD_FLAG_* of the handshake). The kernel takes its own reference to the socket.
pub fn connect(index: u32, sock_fd: i32, size_bytes: u64, server_flags: u64) -> io::Result<()> {
    let s = Socket::open()?;
    let family = s.nbd_family()?;
    let mut a = Vec::new();
    attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
    attr(&mut a, NBD_ATTR_SIZE_BYTES, &size_bytes.to_ne_bytes());
    attr(&mut a, NBD_ATTR_BLOCK_SIZE_BYTES, &512u64.to_ne_bytes());
    attr(&mut a, NBD_ATTR_SERVER_FLAGS, &server_flags.to_ne_bytes());
    let mut fd_attr = Vec::new();
    attr(&mut fd_attr, NBD_SOCK_FD, &(sock_fd as u32).to_ne_bytes());
    let mut item = Vec::new();
    nested(&mut item, NBD_SOCK_ITEM, &fd_attr);
    nested(&mut a, NBD_ATTR_SOCKETS, &item);
    s.request(family, NBD_CMD_CONNECT, &a).map(|_| ())
}

/// Release /dev/nbd`index` after the server stopped (the kernel resets the device).
pub fn disconnect(index: u32) -> io::Result<()> {
    let s = Socket::open()?;
    let family = s.nbd_family()?;
    let mut a = Vec::new();
    attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
    s.request(family, NBD_CMD_DISCONNECT, &a).map(|_| ())
}
