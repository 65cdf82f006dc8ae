//! Enhanced Disk Drive services: the disk address packet (AH=42h-47h) and the AH=48h result buffer.
//! Layouts: docs/int13.md, "Disk address packet" and "AH=48h result buffer".

use super::memory::GuestMemory;
use super::Status;

/// Disk address packet, every form in one layout (EDD-4 long form is the largest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct DiskAddressPacket {
    /// 10h, 18h (flat buffer) or 20h (EDD-4 long count); less than 10h is refused.
    pub size: u8,
    pub reserved: u8,
    /// Blocks to transfer, at most 7Fh; FFh selects the long form.
    pub count: u16,
    pub buffer_offset: u16,
    pub buffer_segment: u16,
    pub lba: u64,
    /// Used when the seg:off buffer is FFFF:FFFF (EDD 3.0) or the count is FFh (EDD-4).
    pub flat_buffer: u64,
    /// EDD-4 32-bit block count, used when `count` is FFh.
    pub long_count: u32,
    pub reserved2: u32,
}
static_assertions::const_assert_eq!(core::mem::size_of::<DiskAddressPacket>(), 0x20);

pub const DAP_MIN_BYTES: u8 = 0x10;
pub const DAP_FLAT_BYTES: u8 = 0x18;
pub const DAP_LONG_BYTES: u8 = 0x20;
/// Phoenix / EDD-4 ceiling on the short block count.
pub const DAP_MAX_SHORT_COUNT: u16 = 0x7F;
const DAP_LONG_COUNT_MARK: u16 = 0xFF;
/// A seg:off buffer is contiguous and real-mode callers can only give 64 KiB of it.
pub const SEG_OFF_MAX_BYTES: u64 = 64 * 1024;

/// Where the packet's count lives, so partial completion can be written back to the same field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DapForm {
    /// 16-byte packet, seg:off buffer.
    SegOff,
    /// seg:off = FFFF:FFFF, 64-bit flat buffer at 10h.
    Flat,
    /// count byte FFh: flat buffer at 10h and a 32-bit count at 18h.
    Long,
}

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DapRequest {
    pub form: DapForm,
    pub lba: u64,
    pub count: u32,
    pub buffer_linear: u64,
    /// Where the packet itself lies in guest memory (DS:SI).
    pub packet_linear: u64,
}

impl DiskAddressPacket {
    pub fn from_bytes(b: &[u8; 0x20]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u32_at(o) as u64 | (u32_at(o + 4) as u64) << 32;
        DiskAddressPacket {
            size: b[0],
            reserved: b[1],
            count: u16_at(2),
            buffer_offset: u16_at(4),
            buffer_segment: u16_at(6),
            lba: u64_at(8),
            flat_buffer: u64_at(0x10),
            long_count: u32_at(0x18),
            reserved2: u32_at(0x1C),
        }
    }

    /// The 16-byte packet a caller of the BIOS builds: `count` blocks at `lba` into the real-mode
    /// buffer at `buffer_linear` (below 1 MiB, given as segment:offset with the offset below 16).
    pub fn seg_off_request(lba: u64, count: u16, buffer_linear: u32) -> [u8; DAP_MIN_BYTES as usize] {
        let mut p = [0u8; DAP_MIN_BYTES as usize];
        p[0] = DAP_MIN_BYTES;
        p[2..4].copy_from_slice(&count.to_le_bytes());
        p[4..6].copy_from_slice(&((buffer_linear & 0xF) as u16).to_le_bytes());
        p[6..8].copy_from_slice(&((buffer_linear >> 4) as u16).to_le_bytes());
        p[8..16].copy_from_slice(&lba.to_le_bytes());
        p
    }

    /// Reads the packet at `packet_linear`: only `size` bytes of it (a 16-byte packet may sit
    /// at the very end of a segment), fields past that count as zero.
    pub fn read(mem: &mut dyn GuestMemory, packet_linear: u64) -> Result<Self, Status> {
        let mut raw = [0u8; 0x20];
        mem.read(packet_linear, &mut raw[..1]).map_err(|_| Status::INVALID)?;
        let len = (raw[0] as usize).min(raw.len());
        if len > 1 {
            mem.read(packet_linear + 1, &mut raw[1..len]).map_err(|_| Status::INVALID)?;
        }
        Ok(Self::from_bytes(&raw))
    }

    /// Applies the parsing rules of docs/int13.md, "Disk address packet". The caller checks the
    /// count against the disk; `block_bytes` bounds seg:off transfers to 64 KiB.
    pub fn request(&self, packet_linear: u64, block_bytes: u32) -> Result<DapRequest, Status> {
        let (size, count) = (self.size, self.count);
        if size < DAP_MIN_BYTES {
            return Err(Status::INVALID);
        }
        let seg_off_is_flat_mark = self.buffer_segment == 0xFFFF && self.buffer_offset == 0xFFFF;
        let (form, count) = if count == DAP_LONG_COUNT_MARK && size >= DAP_LONG_BYTES {
            (DapForm::Long, self.long_count)
        } else if count > DAP_MAX_SHORT_COUNT {
            return Err(Status::INVALID);
        } else if seg_off_is_flat_mark {
            if size < DAP_FLAT_BYTES {
                return Err(Status::INVALID);
            }
            (DapForm::Flat, count as u32)
        } else {
            (DapForm::SegOff, count as u32)
        };
        let buffer_linear = match form {
            DapForm::SegOff => {
                if count as u64 * block_bytes as u64 > SEG_OFF_MAX_BYTES {
                    return Err(Status::BOUNDARY_ERROR);
                }
                super::memory::linear(self.buffer_segment, self.buffer_offset)
            }
            DapForm::Flat | DapForm::Long => {
                // A flat buffer must end inside the 64-bit address space: near 2^64 the
                // transfer's addresses would wrap (memdisk answers unreachable buffers with 09h).
                if self.flat_buffer.checked_add(count as u64 * block_bytes as u64).is_none() {
                    return Err(Status::BOUNDARY_ERROR);
                }
                self.flat_buffer
            }
        };
        Ok(DapRequest { form, lba: self.lba, count, buffer_linear, packet_linear })
    }
}

impl DapRequest {
    /// Tells the caller how many blocks were actually transferred, in the field it gave the
    /// count in.
    pub fn write_back_count(&self, mem: &mut dyn GuestMemory, done_blocks: u32) {
        let _ = match self.form {
            DapForm::SegOff | DapForm::Flat => {
                mem.write(self.packet_linear + 2, &(done_blocks.min(0xFFFF) as u16).to_le_bytes())
            }
            DapForm::Long => mem.write(self.packet_linear + 0x18, &done_blocks.to_le_bytes()),
        };
    }
}

/// AH=48h result buffer up to the DPTE pointer (the EDD 2.x form). Device-path information is
/// never returned: a made-up PCI/ATA path can make Linux's `edd` driver bind the wrong device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct DriveParameters {
    pub size_bytes: u16,
    pub info_flags: u16,
    pub cylinders: u32,
    pub heads: u32,
    pub sectors_per_track: u32,
    pub total_sectors: u64,
    pub bytes_per_sector: u16,
    /// seg:off of the parameter table extension; FFFF:FFFF = none.
    pub dpte: u32,
}
static_assertions::const_assert_eq!(core::mem::size_of::<DriveParameters>(), 0x1E);

pub const PARAMS_EDD1_BYTES: u16 = 0x1A;
pub const PARAMS_EDD2_BYTES: u16 = 0x1E;
/// Offset of the BEDDh device-path key.
const PARAMS_DPI_KEY_OFFSET: u64 = 0x1E;

pub const INFO_DMA_TRANSPARENT: u16 = 0x0001;
pub const INFO_CHS_VALID: u16 = 0x0002;
pub const INFO_REMOVABLE: u16 = 0x0004;
pub const INFO_CHANGE_LINE: u16 = 0x0010;
pub const INFO_LOCKABLE: u16 = 0x0020;
pub const INFO_GEOMETRY_IS_MAXIMUM: u16 = 0x0040;
pub const DPTE_NONE: u32 = 0xFFFF_FFFF;

impl DriveParameters {
    pub fn to_bytes(&self) -> [u8; 0x1E] {
        let mut b = [0u8; 0x1E];
        let (size, flags, c, h, s, total, bps, dpte) = (
            self.size_bytes,
            self.info_flags,
            self.cylinders,
            self.heads,
            self.sectors_per_track,
            self.total_sectors,
            self.bytes_per_sector,
            self.dpte,
        );
        b[0..2].copy_from_slice(&size.to_le_bytes());
        b[2..4].copy_from_slice(&flags.to_le_bytes());
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b[8..12].copy_from_slice(&h.to_le_bytes());
        b[12..16].copy_from_slice(&s.to_le_bytes());
        b[16..24].copy_from_slice(&total.to_le_bytes());
        b[24..26].copy_from_slice(&bps.to_le_bytes());
        b[26..30].copy_from_slice(&dpte.to_le_bytes());
        b
    }

    /// Fills the caller's buffer at `buffer_linear` as its size word allows: under 1Ah is
    /// refused, 1Ah-1Dh gets the EDD 1.x form, 1Eh and more the EDD 2.x form. A buffer big
    /// enough for device-path info gets its key cleared so stale caller bytes cannot read as
    /// "BEDDh: path present".
    pub fn write_to(&self, mem: &mut dyn GuestMemory, buffer_linear: u64) -> Result<(), Status> {
        let mut size_word = [0u8; 2];
        mem.read(buffer_linear, &mut size_word).map_err(|_| Status::INVALID)?;
        let caller_bytes = u16::from_le_bytes(size_word);
        let returned = match caller_bytes {
            0..=0x19 => return Err(Status::INVALID),
            0x1A..=0x1D => PARAMS_EDD1_BYTES,
            _ => PARAMS_EDD2_BYTES,
        };
        let out = DriveParameters { size_bytes: returned, ..*self }.to_bytes();
        mem.write(buffer_linear, &out[..returned as usize]).map_err(|_| Status::INVALID)?;
        if caller_bytes >= PARAMS_EDD2_BYTES + 2 {
            mem.write(buffer_linear + PARAMS_DPI_KEY_OFFSET, &[0, 0]).map_err(|_| Status::INVALID)?;
        }
        Ok(())
    }
}

/// AH=41h: the API subsets we answer (docs/int13.md, "Functions", AH=41h): fixed-disk access
/// (42h-44h, 47h, 48h), EDD support (48h, 4Eh) and the 64-bit flat-buffer packet.
pub const EDD_SUBSET_FIXED_DISK: u16 = 0x0001;
pub const EDD_SUBSET_EDD: u16 = 0x0004;
pub const EDD_SUBSET_64BIT: u16 = 0x0008;
pub const EDD_SUBSETS: u16 = EDD_SUBSET_FIXED_DISK | EDD_SUBSET_EDD | EDD_SUBSET_64BIT;
/// AH=41h version answer: EDD 3.0.
pub const EDD_VERSION_3_0: u8 = 0x30;
