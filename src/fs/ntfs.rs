//! NTFS reader: boot sector, the MFT (itself a fragmented file), update-sequence fixups,
//! attribute lists, non-resident data runs, and $I30 directory indexes walked as B-trees with
//! case-insensitive comparison through the volume's $UpCase table.
//!
//! A file is usable as a disk image only when its unnamed $DATA stream is non-resident, plain
//! (not compressed, sparse or encrypted) and fully initialised; anything else is still readable
//! with `read_to_vec` (small files such as grub.cfg are resident).
//!
//! vboot never changes NTFS metadata: creating or growing a file is done from the OS.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{allocation_refusal, UnitRanges};
use super::{path_components, DirEntry, ExtentList, File, FileKind, FsError};
use super::{read_via_extents, write_via_extents};
use crate::block::{BlockDevice, SECTOR_BYTES};

const ATTR_ATTRIBUTE_LIST: u32 = 0x20;
const ATTR_FILE_NAME: u32 = 0x30;
const ATTR_DATA: u32 = 0x80;
const ATTR_INDEX_ROOT: u32 = 0x90;
const ATTR_INDEX_ALLOCATION: u32 = 0xA0;
const ATTR_REPARSE_POINT: u32 = 0xC0;
const ATTR_END: u32 = 0xFFFF_FFFF;

const ATTR_FLAG_COMPRESSED_MASK: u16 = 0x00FF;
const ATTR_FLAG_ENCRYPTED: u16 = 0x4000;
const ATTR_FLAG_SPARSE: u16 = 0x8000;

const RECORD_IN_USE: u16 = 0x1;
const RECORD_IS_DIRECTORY: u16 = 0x2;

const INDEX_ENTRY_HAS_SUBNODE: u16 = 0x1;
const INDEX_ENTRY_LAST: u16 = 0x2;
const NAMESPACE_DOS: u8 = 2;
const FILE_NAME_FLAG_DIRECTORY: u32 = 0x1000_0000;

const MFT_RECORD_ROOT: u64 = 5;
const MFT_RECORD_UPCASE: u64 = 10;
/// Records below this are the volume's own metadata files ($MFT, $Bitmap, ...).
const FIRST_USER_RECORD: u64 = 24;
/// The update-sequence stride: fixups protect every 512 bytes whatever the sector size.
const FIXUP_STRIDE: usize = 512;
/// Bounds for what a damaged volume can make us allocate or walk.
const MAX_ATTRIBUTE_LIST_BYTES: u64 = 1 << 20;
const MAX_EXTENSION_RECORDS: usize = 4096;
const MAX_INDEX_DEPTH: u32 = 32;
/// Entries of one directory listing (docs/filesystems.md, "NTFS").
const MAX_DIR_ENTRIES: usize = 262_144;

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).unwrap_or(0)
}
fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0)
}
fn le64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
        .unwrap_or(0)
}

/// `len` bytes at `off` of `b`, with the arithmetic in u64: on the 32-bit firmware a 32-bit
/// offset plus a 32-bit length overflows `usize`.
fn slice_at(b: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let end = off.checked_add(len)?;
    b.get(usize::try_from(off).ok()?..usize::try_from(end).ok()?)
}

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(format!("NTFS: {}", msg))
}

fn read_only_message() -> FsError {
    FsError::ReadOnly(
        "NTFS: vboot does not change NTFS metadata at boot; create, grow or rename the file from \
         the host OS (for example with vdisk on Windows)"
            .into(),
    )
}

fn utf16_to_string(units: &[u16]) -> String {
    char::decode_utf16(units.iter().copied()).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

/// Undo the update-sequence protection of a multi-sector structure (MFT record "FILE", index
/// block "INDX"): the last two bytes of every 512-byte stride were replaced by the sequence
/// number and are stored in the array instead. A mismatch means a torn write.
pub fn apply_fixups(buf: &mut [u8], magic: &[u8; 4]) -> Result<(), FsError> {
    if buf.get(0..4) != Some(magic.as_slice()) {
        return Err(corrupt(format!("a {} structure lacks its magic", String::from_utf8_lossy(magic))));
    }
    let usa_offset = le16(buf, 4) as usize;
    let usa_count = le16(buf, 6) as usize;
    let strides = buf.len() / FIXUP_STRIDE;
    if usa_count != strides + 1 || usa_offset + 2 * usa_count > buf.len() || usa_offset < 8 {
        return Err(corrupt("an update sequence array does not fit its structure".into()));
    }
    let usn = [buf[usa_offset], buf[usa_offset + 1]];
    for i in 1..usa_count {
        let end = i * FIXUP_STRIDE - 2;
        if buf[end..end + 2] != usn {
            return Err(corrupt("an MFT record or index block was torn (update sequence mismatch)".into()));
        }
        let saved = [buf[usa_offset + 2 * i], buf[usa_offset + 2 * i + 1]];
        buf[end..end + 2].copy_from_slice(&saved);
    }
    Ok(())
}

/// One run of a non-resident attribute: `clusters` clusters from `vcn`, at `lcn` (None: sparse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DataRun {
    vcn: u64,
    lcn: Option<u64>,
    clusters: u64,
}

/// Decode mapping pairs. Each pair is a header byte (low nibble: length bytes, high nibble:
/// offset bytes), the run length, and the LCN as a signed delta from the previous run's.
fn decode_runs(bytes: &[u8], first_vcn: u64, total_clusters: u64) -> Result<Vec<DataRun>, FsError> {
    let mut runs = Vec::new();
    let mut p = 0usize;
    let mut vcn = first_vcn;
    let mut lcn: i64 = 0;
    while let Some(&h) = bytes.get(p) {
        if h == 0 {
            break;
        }
        let len_bytes = (h & 0xF) as usize;
        let off_bytes = (h >> 4) as usize;
        if len_bytes == 0 || len_bytes > 8 || off_bytes > 8 {
            return Err(corrupt("a data run header is malformed".into()));
        }
        let field = bytes
            .get(p + 1..p + 1 + len_bytes + off_bytes)
            .ok_or_else(|| corrupt("a data run runs past its attribute".into()))?;
        let mut len: u64 = 0;
        for (k, &b) in field[..len_bytes].iter().enumerate() {
            len |= (b as u64) << (8 * k);
        }
        if len == 0 || len > i64::MAX as u64 {
            return Err(corrupt("a data run has no length".into()));
        }
        let run_lcn = if off_bytes == 0 {
            None
        } else {
            let mut delta: i64 = 0;
            for (k, &b) in field[len_bytes..].iter().enumerate() {
                delta |= (b as i64) << (8 * k);
            }
            let shift = 64 - 8 * off_bytes as u32;
            if shift < 64 {
                delta = (delta << shift) >> shift; // sign-extend
            }
            lcn = lcn.checked_add(delta).ok_or_else(|| corrupt("a data run offset overflows".into()))?;
            let start = u64::try_from(lcn).map_err(|_| corrupt("a data run starts before the volume".into()))?;
            if start.checked_add(len).map_or(true, |end| end > total_clusters) {
                return Err(corrupt(format!(
                    "a data run of {} clusters at cluster {} lies outside the volume",
                    len, start
                )));
            }
            Some(start)
        };
        runs.push(DataRun { vcn, lcn: run_lcn, clusters: len });
        vcn = vcn.checked_add(len).ok_or_else(|| corrupt("data runs overflow".into()))?;
        p += 1 + len_bytes + off_bytes;
    }
    Ok(runs)
}

#[derive(Clone, Debug)]
enum AttrBody {
    Resident(Vec<u8>),
    NonResident { lowest_vcn: u64, runs: Vec<DataRun>, data_bytes: u64, initialized_bytes: u64 },
}

#[derive(Clone, Debug)]
struct Attr {
    kind: u32,
    name: Vec<u16>,
    flags: u16,
    body: AttrBody,
}

/// A stream assembled from all of its attribute extents.
#[derive(Clone, Debug)]
enum Stream {
    Resident(Vec<u8>),
    NonResident { runs: Vec<DataRun>, data_bytes: u64, initialized_bytes: u64, flags: u16 },
}

/// A file record with the attributes of its base and extension records.
struct Record {
    flags: u16,
    sequence: u16,
    attrs: Vec<Attr>,
}

/// One entry of a directory index: the FILE_NAME key and the record it names.
#[derive(Clone, Debug)]
struct IndexEntry {
    record: u64,
    sequence: u16,
    name: Vec<u16>,
    namespace: u8,
    is_dir: bool,
}

enum Step {
    Found(IndexEntry),
    Descend(u64),
    Missing,
}

pub struct NtfsVolume<D: BlockDevice> {
    dev: D,
    cluster_bytes: u64,
    total_clusters: u64,
    record_bytes: u64,
    mft_runs: Vec<DataRun>,
    mft_records: u64,
    upcase: Vec<u16>,
}

impl<D: BlockDevice> NtfsVolume<D> {
    pub fn open(mut dev: D) -> Result<Self, FsError> {
        let mut boot = [0u8; SECTOR_BYTES];
        dev.read_sectors(0, &mut boot)?;
        if &boot[3..11] != b"NTFS    " {
            return Err(FsError::NotRecognized("no NTFS signature in the boot sector".into()));
        }
        if boot[510] != 0x55 || boot[511] != 0xAA {
            return Err(FsError::NotRecognized("NTFS boot sector lacks the 55AA signature".into()));
        }
        let sector_bytes = le16(&boot, 0x0B) as u64;
        let spc_raw = boot[0x0D];
        // Above 0x80 the field is a negative power of two (for clusters over 64 KiB).
        let sectors_per_cluster = if spc_raw <= 0x80 {
            spc_raw as u64
        } else {
            let shift = 256 - spc_raw as u32;
            if shift > 20 {
                0
            } else {
                1u64 << shift
            }
        };
        if !(512..=4096).contains(&sector_bytes)
            || !sector_bytes.is_power_of_two()
            || sectors_per_cluster == 0
            || !sectors_per_cluster.is_power_of_two()
        {
            return Err(corrupt("boot sector sector/cluster sizes are invalid".into()));
        }
        let cluster_bytes = sector_bytes * sectors_per_cluster;
        if cluster_bytes > 2 << 20 {
            return Err(corrupt(format!("cluster size {} is too large", cluster_bytes)));
        }
        let total_sectors = le64(&boot, 0x28);
        let dev_bytes = dev.sector_count() * SECTOR_BYTES as u64;
        if total_sectors.checked_mul(sector_bytes).map_or(true, |b| b > dev_bytes) {
            return Err(corrupt(format!(
                "the volume has {} sectors, more than the partition holds",
                total_sectors
            )));
        }
        let total_clusters = total_sectors * sector_bytes / cluster_bytes;
        let record_bytes = size_from_clusters_field(boot[0x40] as i8, cluster_bytes)
            .filter(|b| (1024..=65536).contains(b))
            .ok_or_else(|| corrupt("MFT record size is invalid".into()))?;
        let mft_lcn = le64(&boot, 0x30);
        if mft_lcn.checked_add(1).map_or(true, |end| end > total_clusters) {
            return Err(corrupt("the MFT starts outside the volume".into()));
        }

        // Bootstrap: record 0 describes the MFT; read it straight from its first cluster.
        let mut vol = NtfsVolume {
            dev,
            cluster_bytes,
            total_clusters,
            record_bytes,
            mft_runs: vec![DataRun {
                vcn: 0,
                lcn: Some(mft_lcn),
                clusters: (record_bytes + cluster_bytes - 1) / cluster_bytes,
            }],
            mft_records: 1,
            upcase: Vec::new(),
        };
        let first_extent = vol.read_base_record_attrs(0)?;
        let data = first_extent
            .iter()
            .find(|a| a.kind == ATTR_DATA && a.name.is_empty())
            .ok_or_else(|| corrupt("$MFT has no data attribute".into()))?;
        if let AttrBody::NonResident { runs, data_bytes, .. } = &data.body {
            vol.mft_runs = runs.clone();
            vol.mft_records = data_bytes / record_bytes;
        } else {
            return Err(corrupt("$MFT data is resident".into()));
        }
        // With an attribute list the MFT's later runs live in extension records, which the
        // first runs already reach.
        let mft = vol.read_record(0)?;
        match vol.stream(&mft, ATTR_DATA, &[], "$MFT")? {
            Stream::NonResident { runs, data_bytes, .. } => {
                vol.mft_runs = runs;
                vol.mft_records = data_bytes / record_bytes;
            }
            Stream::Resident(_) => return Err(corrupt("$MFT data is resident".into())),
        }
        let covered = vol.mft_runs.iter().map(|r| r.clusters).sum::<u64>().saturating_mul(cluster_bytes);
        if covered < vol.mft_records.saturating_mul(record_bytes) {
            return Err(corrupt("$MFT data runs are shorter than its size".into()));
        }

        let upcase_rec = vol.read_record(MFT_RECORD_UPCASE)?;
        let raw = vol.read_stream(&upcase_rec, ATTR_DATA, &[], "$UpCase", 2 * 65536)?;
        if raw.len() != 2 * 65536 {
            return Err(corrupt(format!("$UpCase is {} bytes, not 131072", raw.len())));
        }
        vol.upcase = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Ok(vol)
    }

    pub fn into_inner(self) -> D {
        self.dev
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    /// Read `buf.len()` bytes at byte `offset` of a non-resident stream; sparse runs read as
    /// zeros.
    fn read_runs(&mut self, runs: &[DataRun], offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or_else(|| corrupt(format!("a stream read at byte {} overflows", offset)))?;
            let vcn = pos / self.cluster_bytes;
            let run = runs
                .iter()
                .find(|r| r.vcn <= vcn && vcn < r.vcn + r.clusters)
                .ok_or_else(|| corrupt(format!("byte {} of a stream is not mapped by its data runs", pos)))?;
            let run_end_bytes = (run.vcn + run.clusters).saturating_mul(self.cluster_bytes);
            // In u64 first: a run with an exact multiple of 4 GiB left is 0 as a 32-bit usize,
            // and the walk would never advance.
            let take = run_end_bytes.saturating_sub(pos).min((buf.len() - done) as u64) as usize;
            if take == 0 {
                return Err(corrupt(format!("byte {} of a stream ends its data run", pos)));
            }
            match run.lcn {
                None => buf[done..done + take].fill(0),
                Some(lcn) => {
                    let byte = (lcn + (vcn - run.vcn)) * self.cluster_bytes + pos % self.cluster_bytes;
                    read_bytes(&mut self.dev, byte, &mut buf[done..done + take])?;
                }
            }
            done += take;
        }
        Ok(())
    }

    fn read_raw_record(&mut self, number: u64) -> Result<Vec<u8>, FsError> {
        if number >= self.mft_records.max(1) {
            return Err(corrupt(format!("MFT record {} is past the end of the MFT", number)));
        }
        let mut buf = vec![0u8; self.record_bytes as usize];
        let runs = core::mem::take(&mut self.mft_runs);
        let r = self.read_runs(&runs, number * self.record_bytes, &mut buf);
        self.mft_runs = runs;
        r?;
        apply_fixups(&mut buf, b"FILE")?;
        Ok(buf)
    }

    fn parse_attrs(&self, rec: &[u8], number: u64) -> Result<Vec<Attr>, FsError> {
        let mut out = Vec::new();
        let used = (le32(rec, 0x18) as usize).min(rec.len());
        let mut off = le16(rec, 0x14) as usize;
        // Each attribute is at least 24 bytes, which bounds the loop.
        while off + 8 <= used {
            let kind = le32(rec, off);
            if kind == ATTR_END {
                break;
            }
            // u64: a length near 4 GiB must not wrap the 32-bit firmware's usize.
            let len = le32(rec, off + 4) as u64;
            if len < 24 || len % 8 != 0 || len > (used - off) as u64 {
                return Err(corrupt(format!("MFT record {} has a malformed attribute (length {})", number, len)));
            }
            let len = len as usize;
            let a = &rec[off..off + len];
            let name_len = a[9] as usize;
            let name_off = le16(a, 10) as usize;
            let name: Vec<u16> = a
                .get(name_off..name_off + 2 * name_len)
                .ok_or_else(|| corrupt(format!("MFT record {}: attribute name out of bounds", number)))?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let flags = le16(a, 12);
            let body = if a[8] == 0 {
                let vlen = le32(a, 0x10) as u64;
                let voff = le16(a, 0x14) as u64;
                let v = slice_at(a, voff, vlen).ok_or_else(|| {
                    corrupt(format!("MFT record {}: resident value of {} bytes at {} out of bounds", number, vlen, voff))
                })?;
                AttrBody::Resident(v.to_vec())
            } else {
                if len < 0x40 {
                    return Err(corrupt(format!("MFT record {}: non-resident attribute too short", number)));
                }
                let lowest_vcn = le64(a, 0x10);
                let highest_vcn = le64(a, 0x18);
                let pairs_off = le16(a, 0x20) as usize;
                let pairs = a
                    .get(pairs_off..)
                    .ok_or_else(|| corrupt(format!("MFT record {}: data runs out of bounds", number)))?;
                let runs = decode_runs(pairs, lowest_vcn, self.total_clusters)?;
                let end_vcn = runs.last().map_or(lowest_vcn, |r| r.vcn + r.clusters);
                if end_vcn != highest_vcn.wrapping_add(1) && !(runs.is_empty() && highest_vcn == u64::MAX) {
                    return Err(corrupt(format!(
                        "MFT record {}: data runs end at cluster {} but the attribute says {}",
                        number,
                        end_vcn,
                        highest_vcn.wrapping_add(1)
                    )));
                }
                AttrBody::NonResident {
                    lowest_vcn,
                    runs,
                    data_bytes: le64(a, 0x30),
                    initialized_bytes: le64(a, 0x38),
                }
            };
            out.push(Attr { kind, name, flags, body });
            off += len;
        }
        Ok(out)
    }

    fn read_base_record_attrs(&mut self, number: u64) -> Result<Vec<Attr>, FsError> {
        let rec = self.read_raw_record(number)?;
        self.parse_attrs(&rec, number)
    }

    /// A base record with the attributes of all its extension records.
    fn read_record(&mut self, number: u64) -> Result<Record, FsError> {
        let rec = self.read_raw_record(number)?;
        let flags = le16(&rec, 0x16);
        if flags & RECORD_IN_USE == 0 {
            return Err(corrupt(format!("MFT record {} is not in use", number)));
        }
        if le64(&rec, 0x20) & 0xFFFF_FFFF_FFFF != 0 {
            return Err(corrupt(format!("MFT record {} is an extension record, not a file", number)));
        }
        let sequence = le16(&rec, 0x10);
        let mut attrs = self.parse_attrs(&rec, number)?;
        let list = attrs.iter().find(|a| a.kind == ATTR_ATTRIBUTE_LIST).cloned();
        if let Some(list) = list {
            let bytes = match &list.body {
                AttrBody::Resident(v) => v.clone(),
                AttrBody::NonResident { runs, data_bytes, .. } => {
                    if *data_bytes > MAX_ATTRIBUTE_LIST_BYTES {
                        return Err(corrupt(format!("MFT record {}: attribute list too large", number)));
                    }
                    let mut v = vec![0u8; *data_bytes as usize];
                    self.read_runs(runs, 0, &mut v)?;
                    v
                }
            };
            let mut extension_records: Vec<u64> = Vec::new();
            let mut off = 0usize;
            while off + 0x1A <= bytes.len() {
                let len = le16(&bytes, off + 4) as usize;
                if len < 0x1A || off + len > bytes.len() {
                    return Err(corrupt(format!("MFT record {}: malformed attribute list", number)));
                }
                let r = le64(&bytes, off + 0x10) & 0xFFFF_FFFF_FFFF;
                if r != number && !extension_records.contains(&r) {
                    extension_records.push(r);
                    if extension_records.len() > MAX_EXTENSION_RECORDS {
                        return Err(corrupt(format!("MFT record {}: too many extension records", number)));
                    }
                }
                off += len;
            }
            for r in extension_records {
                let ext = self.read_raw_record(r)?;
                if le64(&ext, 0x20) & 0xFFFF_FFFF_FFFF != number || le16(&ext, 0x16) & RECORD_IN_USE == 0 {
                    return Err(corrupt(format!(
                        "MFT record {} is listed as an extension of record {} but does not belong to it",
                        r, number
                    )));
                }
                attrs.extend(self.parse_attrs(&ext, r)?);
            }
        }
        Ok(Record { flags, sequence, attrs })
    }

    /// Assemble the stream `kind`/`name` from its attribute extents, in VCN order.
    fn stream(&self, rec: &Record, kind: u32, name: &[u16], what: &str) -> Result<Stream, FsError> {
        let mut parts: Vec<&Attr> = rec.attrs.iter().filter(|a| a.kind == kind && a.name == name).collect();
        if parts.is_empty() {
            return Err(FsError::NotFound { path: format!("{} (attribute {:#x})", what, kind) });
        }
        if parts.len() == 1 {
            if let AttrBody::Resident(v) = &parts[0].body {
                return Ok(Stream::Resident(v.clone()));
            }
        }
        parts.sort_by_key(|a| match a.body {
            AttrBody::NonResident { lowest_vcn, .. } => lowest_vcn,
            AttrBody::Resident(_) => 0,
        });
        let mut runs: Vec<DataRun> = Vec::new();
        let mut sizes = None;
        let mut next_vcn = 0u64;
        for a in parts {
            let AttrBody::NonResident { lowest_vcn, runs: r, data_bytes, initialized_bytes } = &a.body else {
                return Err(corrupt(format!("{}: a stream is both resident and non-resident", what)));
            };
            if *lowest_vcn != next_vcn {
                return Err(corrupt(format!("{}: the stream's extents leave a gap or overlap", what)));
            }
            if *lowest_vcn == 0 {
                sizes = Some((*data_bytes, *initialized_bytes, a.flags));
            }
            next_vcn = r.last().map_or(next_vcn, |x| x.vcn + x.clusters);
            runs.extend_from_slice(r);
        }
        let (data_bytes, initialized_bytes, flags) =
            sizes.ok_or_else(|| corrupt(format!("{}: the stream has no first extent", what)))?;
        if next_vcn.saturating_mul(self.cluster_bytes) < data_bytes || initialized_bytes > data_bytes {
            return Err(corrupt(format!("{}: the stream's runs do not cover its size", what)));
        }
        Ok(Stream::NonResident { runs, data_bytes, initialized_bytes, flags })
    }

    /// A whole stream, up to `max_bytes`. Bytes past the initialised size read as zeros.
    fn read_stream(
        &mut self,
        rec: &Record,
        kind: u32,
        name: &[u16],
        what: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, FsError> {
        match self.stream(rec, kind, name, what)? {
            Stream::Resident(v) => {
                if v.len() as u64 > max_bytes {
                    return Err(FsError::Unsupported(format!("{} is larger than {} bytes", what, max_bytes)));
                }
                Ok(v)
            }
            Stream::NonResident { runs, data_bytes, initialized_bytes, flags } => {
                if flags & ATTR_FLAG_COMPRESSED_MASK != 0 {
                    return Err(FsError::Unsupported(format!("NTFS: {} is compressed", what)));
                }
                if flags & ATTR_FLAG_ENCRYPTED != 0 {
                    return Err(FsError::Unsupported(format!("NTFS: {} is encrypted (EFS)", what)));
                }
                if data_bytes > max_bytes {
                    return Err(FsError::Unsupported(format!(
                        "{} is {} bytes, more than the {} expected",
                        what, data_bytes, max_bytes
                    )));
                }
                let size = usize::try_from(data_bytes).map_err(|_| {
                    FsError::Unsupported(format!("{} is {} bytes, too large to hold in memory", what, data_bytes))
                })?;
                let mut v = vec![0u8; size];
                let valid = initialized_bytes as usize;
                self.read_runs(&runs, 0, &mut v[..valid])?;
                Ok(v)
            }
        }
    }

    fn upcase_unit(&self, c: u16) -> u16 {
        self.upcase.get(c as usize).copied().unwrap_or(c)
    }

    /// NTFS file-name collation: compare up-cased UTF-16 units, shorter first on a tie.
    fn collate(&self, a: &[u16], b: &[u16]) -> core::cmp::Ordering {
        for (&x, &y) in a.iter().zip(b) {
            let o = self.upcase_unit(x).cmp(&self.upcase_unit(y));
            if o != core::cmp::Ordering::Equal {
                return o;
            }
        }
        a.len().cmp(&b.len())
    }

    /// The entries of one index node (from its index header at `hdr`), and the subnode VCN
    /// that follows each entry position (one more than the entries: the "last" entry).
    fn parse_index_node(&self, node: &[u8], hdr: usize) -> Result<Vec<(Option<IndexEntry>, Option<u64>)>, FsError> {
        // u64: offsets near 4 GiB must not wrap the 32-bit firmware's usize.
        let end = (hdr as u64 + le32(node, hdr + 4) as u64).min(node.len() as u64) as usize;
        let start = hdr as u64 + le32(node, hdr) as u64;
        if start > end as u64 {
            return Err(corrupt(format!("an index node's entries start at byte {}, past its end", start)));
        }
        let mut out = Vec::new();
        // Every entry is at least 16 bytes, so the walk advances to `end`.
        let mut off = start as usize;
        loop {
            if off + 16 > end {
                return Err(corrupt("an index node has no last entry".into()));
            }
            let len = le16(node, off + 8) as usize;
            let key_len = le16(node, off + 10) as usize;
            let flags = le16(node, off + 12);
            if len < 16 || len % 8 != 0 || off + len > end || 16 + key_len > len {
                return Err(corrupt("an index entry is malformed".into()));
            }
            let sub = if flags & INDEX_ENTRY_HAS_SUBNODE != 0 {
                if len < 24 {
                    return Err(corrupt("an index entry is too short for its subnode".into()));
                }
                Some(le64(node, off + len - 8))
            } else {
                None
            };
            if flags & INDEX_ENTRY_LAST != 0 {
                out.push((None, sub));
                return Ok(out);
            }
            let key = &node[off + 16..off + 16 + key_len];
            let name_len = key.get(0x40).copied().unwrap_or(0) as usize;
            let name: Vec<u16> = key
                .get(0x42..0x42 + 2 * name_len)
                .ok_or_else(|| corrupt("an index entry's file name is out of bounds".into()))?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let reference = le64(node, off);
            out.push((
                Some(IndexEntry {
                    record: reference & 0xFFFF_FFFF_FFFF,
                    sequence: (reference >> 48) as u16,
                    name,
                    namespace: key[0x41],
                    is_dir: le32(key, 0x38) & FILE_NAME_FLAG_DIRECTORY != 0,
                }),
                sub,
            ));
            if out.len() > node.len() / 16 {
                return Err(corrupt("an index node has too many entries".into()));
            }
            off += len;
        }
    }

    /// The root node of a directory's $I30 index, and its allocation (runs, block size).
    fn directory_index(&mut self, rec: &Record, what: &str) -> Result<(Vec<u8>, Vec<DataRun>, u64, u64), FsError> {
        let i30: Vec<u16> = "$I30".encode_utf16().collect();
        let root = match self.stream(rec, ATTR_INDEX_ROOT, &i30, what)? {
            Stream::Resident(v) => v,
            Stream::NonResident { .. } => return Err(corrupt(format!("{}: the index root is non-resident", what))),
        };
        if root.len() < 0x20 {
            return Err(corrupt(format!("{}: the index root is too short", what)));
        }
        let block_bytes = le32(&root, 8) as u64;
        let (runs, alloc_bytes) = match self.stream(rec, ATTR_INDEX_ALLOCATION, &i30, what) {
            Ok(Stream::NonResident { runs, data_bytes, .. }) => (runs, data_bytes),
            Ok(Stream::Resident(_)) => return Err(corrupt(format!("{}: the index allocation is resident", what))),
            Err(FsError::NotFound { .. }) => (Vec::new(), 0),
            Err(e) => return Err(e),
        };
        if !runs.is_empty() && (!(512..=65536).contains(&block_bytes) || !block_bytes.is_power_of_two()) {
            return Err(corrupt(format!("{}: index block size {} is invalid", what, block_bytes)));
        }
        Ok((root, runs, alloc_bytes, block_bytes))
    }

    fn read_index_block(&mut self, runs: &[DataRun], alloc_bytes: u64, block_bytes: u64, vcn: u64) -> Result<Vec<u8>, FsError> {
        // Index VCNs count clusters, or 512-byte units when clusters are larger than blocks.
        let unit = if block_bytes >= self.cluster_bytes { self.cluster_bytes } else { 512 };
        let offset = vcn.checked_mul(unit).filter(|o| o.saturating_add(block_bytes) <= alloc_bytes);
        let offset = offset.ok_or_else(|| corrupt(format!("index block VCN {} is outside the index", vcn)))?;
        let mut buf = vec![0u8; block_bytes as usize];
        self.read_runs(runs, offset, &mut buf)?;
        apply_fixups(&mut buf, b"INDX")?;
        if le64(&buf, 0x10) != vcn {
            return Err(corrupt(format!("index block at VCN {} names itself VCN {}", vcn, le64(&buf, 0x10))));
        }
        Ok(buf)
    }

    /// B-tree search of a directory for `name`.
    fn find_in_dir(&mut self, rec: &Record, name: &[u16], what: &str) -> Result<Option<IndexEntry>, FsError> {
        let (root, runs, alloc_bytes, block_bytes) = self.directory_index(rec, what)?;
        let mut entries = self.parse_index_node(&root, 0x10)?;
        for _ in 0..MAX_INDEX_DEPTH {
            let mut step = Step::Missing;
            for (entry, sub) in entries {
                match entry {
                    None => {
                        step = sub.map_or(Step::Missing, Step::Descend);
                        break;
                    }
                    Some(e) => match self.collate(name, &e.name) {
                        core::cmp::Ordering::Equal => {
                            step = Step::Found(e);
                            break;
                        }
                        core::cmp::Ordering::Less => {
                            step = sub.map_or(Step::Missing, Step::Descend);
                            break;
                        }
                        core::cmp::Ordering::Greater => {}
                    },
                }
            }
            match step {
                Step::Found(e) => return Ok(Some(e)),
                Step::Missing => return Ok(None),
                Step::Descend(vcn) => {
                    let block = self.read_index_block(&runs, alloc_bytes, block_bytes, vcn)?;
                    entries = self.parse_index_node(&block, 0x18)?;
                }
            }
        }
        Err(corrupt(format!("{}: the directory index is deeper than {} levels", what, MAX_INDEX_DEPTH)))
    }

    /// Every entry of a directory, in index order.
    fn all_in_dir(&mut self, rec: &Record, what: &str) -> Result<Vec<IndexEntry>, FsError> {
        let (root, runs, alloc_bytes, block_bytes) = self.directory_index(rec, what)?;
        let max_blocks = if block_bytes == 0 { 0 } else { alloc_bytes / block_bytes };
        let mut out = Vec::new();
        let mut visited = 0u64;
        // Depth-first, in order: a stack of pending (entry, subnode) lists.
        let mut stack: Vec<alloc::vec::IntoIter<(Option<IndexEntry>, Option<u64>)>> =
            vec![self.parse_index_node(&root, 0x10)?.into_iter()];
        while let Some(top) = stack.last_mut() {
            let Some((entry, sub)) = top.next() else {
                stack.pop();
                continue;
            };
            if let Some(e) = entry {
                // A damaged index can name the same blocks again and again (up to the index's
                // size, a header value): the listing is bounded by what a directory holds.
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(FsError::Unsupported(format!(
                        "NTFS: directory {} has more than {} entries, more than vboot lists",
                        what, MAX_DIR_ENTRIES
                    )));
                }
                out.push(e);
            }
            // The subnode holds names before this entry; pushing it after recording the entry
            // breaks strict order but not completeness, and callers do not rely on order.
            if let Some(vcn) = sub {
                visited += 1;
                if visited > max_blocks || stack.len() as u32 > MAX_INDEX_DEPTH {
                    return Err(corrupt(format!("{}: the directory index loops", what)));
                }
                let block = self.read_index_block(&runs, alloc_bytes, block_bytes, vcn)?;
                stack.push(self.parse_index_node(&block, 0x18)?.into_iter());
            }
        }
        Ok(out)
    }

    /// The long (Win32 or POSIX) name of `rec` inside directory `parent`, if it has one.
    fn long_name(&self, rec: &Record, parent: u64) -> Option<Vec<u16>> {
        let mut best: Option<Vec<u16>> = None;
        for a in rec.attrs.iter().filter(|a| a.kind == ATTR_FILE_NAME) {
            let AttrBody::Resident(v) = &a.body else { continue };
            if le64(v, 0) & 0xFFFF_FFFF_FFFF != parent {
                continue;
            }
            let n = v.get(0x40).copied().unwrap_or(0) as usize;
            let Some(raw) = v.get(0x42..0x42 + 2 * n) else { continue };
            let name: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            if v[0x41] != NAMESPACE_DOS {
                return Some(name);
            }
            best.get_or_insert(name);
        }
        best
    }

    fn open_record(&mut self, e: &IndexEntry) -> Result<Record, FsError> {
        let rec = self.read_record(e.record)?;
        if e.sequence != 0 && rec.sequence != e.sequence {
            return Err(corrupt(format!(
                "a directory entry for {} points at a reused MFT record {}",
                utf16_to_string(&e.name),
                e.record
            )));
        }
        Ok(rec)
    }

    fn lookup(&mut self, path: &str) -> Result<(Record, String), FsError> {
        let mut cur = self.read_record(MFT_RECORD_ROOT)?;
        let mut cur_number = MFT_RECORD_ROOT;
        let mut spelled = String::new();
        for comp in path_components(path) {
            if cur.flags & RECORD_IS_DIRECTORY == 0 {
                return Err(FsError::NotADirectory { path: spelled });
            }
            let want: Vec<u16> = comp.encode_utf16().collect();
            let what = if spelled.is_empty() { String::from("/") } else { spelled.clone() };
            let found = self.find_in_dir(&cur, &want, &what)?;
            spelled.push('/');
            let Some(e) = found else {
                spelled.push_str(comp);
                return Err(FsError::NotFound { path: spelled });
            };
            let rec = self.open_record(&e)?;
            // Whether the path used the 8.3 name or the long one, spell the long one.
            let name = self.long_name(&rec, cur_number).unwrap_or(e.name);
            spelled.push_str(&utf16_to_string(&name));
            cur = rec;
            cur_number = e.record;
        }
        if spelled.is_empty() {
            spelled.push('/');
        }
        Ok((cur, spelled))
    }

    fn file_record(&mut self, path: &str) -> Result<(Record, String), FsError> {
        let (rec, spelled) = self.lookup(path)?;
        if rec.flags & RECORD_IS_DIRECTORY != 0 {
            return Err(FsError::IsADirectory { path: spelled });
        }
        if rec.attrs.iter().any(|a| a.kind == ATTR_REPARSE_POINT) {
            return Err(FsError::Unsupported(format!(
                "NTFS: {} is a reparse point (a link, or a file compressed by Windows CompactOS or \
                 deduplication); copy it to a plain file first",
                spelled
            )));
        }
        Ok((rec, spelled))
    }

    /// Open a file for use as a disk image: its exact sectors.
    pub fn open_file(&mut self, path: &str) -> Result<File, FsError> {
        let (rec, spelled) = self.file_record(path)?;
        let refuse = |why: &str| Err(FsError::Unsupported(format!("NTFS: {} {}", spelled, why)));
        match self.stream(&rec, ATTR_DATA, &[], &spelled)? {
            Stream::Resident(v) => refuse(&format!(
                "is only {} bytes and is stored inside its MFT record (resident), so it has no \
                 sectors to use as a disk",
                v.len()
            )),
            Stream::NonResident { runs, data_bytes, initialized_bytes, flags } => {
                if flags & ATTR_FLAG_COMPRESSED_MASK != 0 {
                    return refuse("is compressed; uncompress it in its Properties (Advanced) first");
                }
                if flags & ATTR_FLAG_ENCRYPTED != 0 {
                    return refuse("is encrypted (EFS); decrypt it first");
                }
                if flags & ATTR_FLAG_SPARSE != 0 || runs.iter().any(|r| r.lcn.is_none()) {
                    return refuse("is sparse; make it a plain file first (fsutil sparse setflag FILE 0)");
                }
                if initialized_bytes < data_bytes {
                    return refuse(&format!(
                        "has only its first {} of {} bytes written (valid data length); write the \
                         whole file first",
                        initialized_bytes, data_bytes
                    ));
                }
                let to512 = self.cluster_bytes / SECTOR_BYTES as u64;
                let mut left = data_bytes.div_ceil(SECTOR_BYTES as u64);
                let mut extents = ExtentList::default();
                for r in runs {
                    let Some(lcn) = r.lcn else { continue };
                    let sectors = (r.clusters * to512).min(left);
                    if sectors == 0 {
                        break;
                    }
                    extents.push(lcn * to512, sectors);
                    left -= sectors;
                }
                Ok(File { path: spelled, size_bytes: data_bytes, extents })
            }
        }
    }

    /// Refuse a file whose clusters `$Bitmap` marks free, or that lie in the volume's own
    /// structures: the boot sectors (`$Boot`), the MFT and its mirror, `$LogFile` and `$Bitmap`
    /// (docs/filesystems.md, "NTFS"). Reads `$Bitmap` only where the file's clusters are, a few
    /// KiB at a time.
    pub fn check_allocation(&mut self, file: &File) -> Result<(), FsError> {
        const REPAIR: &str = "chkdsk /f (or ntfsfix)";
        let refuse = |detail: String| allocation_refusal(file, detail, REPAIR);
        let to512 = self.cluster_bytes / SECTOR_BYTES as u64;
        let clusters = UnitRanges::of_file(file, 0, to512, 0, self.total_clusters, "cluster", REPAIR)?;
        let overlap = |from: u64, to: u64| clusters.overlap(from, to);
        // The volume's own files, by their data runs; the boot sector by where it must be.
        let boot_clusters = (8192u64).div_ceil(self.cluster_bytes);
        if let Some(c) = overlap(0, boot_clusters) {
            return Err(refuse(format!("its cluster {} lies in the boot sectors", c)));
        }
        for r in &self.mft_runs {
            if let Some(c) = r.lcn.and_then(|lcn| overlap(lcn, lcn.saturating_add(r.clusters))) {
                return Err(refuse(format!("its cluster {} lies in the MFT ($MFT)", c)));
            }
        }
        let mut bitmap_runs = Vec::new();
        for (number, what) in [(1u64, "$MFTMirr"), (2, "$LogFile"), (6, "$Bitmap"), (7, "$Boot")] {
            let rec = self.read_record(number)?;
            let runs = match self.stream(&rec, ATTR_DATA, &[], what)? {
                Stream::NonResident { runs, .. } => runs,
                Stream::Resident(_) if number == 6 => return Err(corrupt("$Bitmap is resident".into())),
                Stream::Resident(_) => continue,
            };
            for r in &runs {
                if let Some(c) = r.lcn.and_then(|lcn| overlap(lcn, lcn.saturating_add(r.clusters))) {
                    return Err(refuse(format!("its cluster {} lies in {}", c, what)));
                }
            }
            if number == 6 {
                bitmap_runs = runs;
            }
        }
        // Every cluster set in $Bitmap (bit n of byte n / 8 is cluster n).
        const PIECE_BYTES: u64 = 4096;
        let mapped_bytes = bitmap_runs.last().map_or(0, |r| (r.vcn + r.clusters).saturating_mul(self.cluster_bytes));
        let mut piece = vec![0u8; PIECE_BYTES as usize];
        let mut piece_at: Option<u64> = None;
        for &(from, to) in &clusters.ranges {
            for c in from..to {
                let byte = c / 8;
                if byte >= mapped_bytes {
                    return Err(refuse(format!("its cluster {} lies past the end of $Bitmap", c)));
                }
                let start = byte - byte % PIECE_BYTES;
                if piece_at != Some(start) {
                    let len = PIECE_BYTES.min(mapped_bytes.saturating_sub(start)).max(1) as usize;
                    self.read_runs(&bitmap_runs, start, &mut piece[..len])?;
                    piece_at = Some(start);
                }
                if piece[(byte - start) as usize] & (1 << (c % 8)) == 0 {
                    return Err(refuse(format!("it uses cluster {}, which $Bitmap marks free", c)));
                }
            }
        }
        Ok(())
    }

    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (rec, spelled) = self.lookup(path)?;
        if rec.flags & RECORD_IS_DIRECTORY == 0 {
            return Err(FsError::NotADirectory { path: spelled });
        }
        let mut out = Vec::new();
        for e in self.all_in_dir(&rec, &spelled)? {
            // DOS-only entries repeat a file already listed under its long name.
            if e.namespace == NAMESPACE_DOS || e.record < FIRST_USER_RECORD {
                continue;
            }
            let size_bytes = if e.is_dir {
                0
            } else {
                let r = self.open_record(&e)?;
                match self.stream(&r, ATTR_DATA, &[], &spelled) {
                    Ok(Stream::Resident(v)) => v.len() as u64,
                    Ok(Stream::NonResident { data_bytes, .. }) => data_bytes,
                    Err(FsError::NotFound { .. }) => 0,
                    Err(err) => return Err(err),
                }
            };
            out.push(DirEntry {
                name: utf16_to_string(&e.name),
                kind: if e.is_dir { FileKind::Directory } else { FileKind::File },
                size_bytes,
            });
        }
        Ok(out)
    }

    pub fn read_file(&mut self, file: &File, offset_bytes: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        read_via_extents(&mut self.dev, file, offset_bytes, buf)
    }

    /// A whole file (up to `max_bytes`), resident or not; sparse runs and bytes past the valid
    /// data length read as zeros. Compressed and encrypted files are refused.
    pub fn read_to_vec(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FsError> {
        let (rec, spelled) = self.file_record(path)?;
        self.read_stream(&rec, ATTR_DATA, &[], &spelled, max_bytes)
    }

    /// Write `buf` at `offset_bytes` inside the file's existing extents (no metadata change).
    /// Writes past the end of the file are refused.
    pub fn write_file(&mut self, file: &File, offset_bytes: u64, buf: &[u8]) -> Result<usize, FsError> {
        write_via_extents(&mut self.dev, file, offset_bytes, buf)
    }

    /// Metadata changes are refused: see the module documentation.
    pub fn create_file(&mut self, _path: &str, _size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn grow_file(&mut self, _path: &str, _new_size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn truncate_file(&mut self, _path: &str, _new_size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn delete_file(&mut self, _path: &str) -> Result<(), FsError> {
        Err(read_only_message())
    }
    pub fn rename(&mut self, _from: &str, _to: &str) -> Result<(), FsError> {
        Err(read_only_message())
    }
}

/// The boot sector's "clusters per record/block" field: positive counts clusters, negative
/// gives the size as a power of two.
fn size_from_clusters_field(v: i8, cluster_bytes: u64) -> Option<u64> {
    if v > 0 {
        Some(v as u64 * cluster_bytes)
    } else {
        let shift = -(v as i32);
        if (0..=31).contains(&shift) && v != 0 {
            Some(1u64 << shift)
        } else {
            None
        }
    }
}

/// Read `buf.len()` bytes at byte `offset` of the device, whatever their alignment.
fn read_bytes<D: BlockDevice>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
    let first = offset / SECTOR_BYTES as u64;
    let skip = (offset % SECTOR_BYTES as u64) as usize;
    if skip == 0 && buf.len() % SECTOR_BYTES == 0 {
        dev.read_sectors(first, buf)?;
        return Ok(());
    }
    let sectors = (skip + buf.len() + SECTOR_BYTES - 1) / SECTOR_BYTES;
    let mut tmp = vec![0u8; sectors * SECTOR_BYTES];
    dev.read_sectors(first, &mut tmp)?;
    buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_decode_with_signed_deltas_and_sparse_runs() {
        // 0x21: 1 length byte, 2 offset bytes. Run 1: 0x18 clusters at 0x5634.
        // 0x11 with offset 0xF0 (-16): 2 clusters at 0x5624. 0x01: 5 sparse clusters.
        let b = [0x21, 0x18, 0x34, 0x56, 0x11, 0x02, 0xF0, 0x01, 0x05, 0x00];
        let runs = decode_runs(&b, 0, 1 << 20).unwrap();
        assert_eq!(
            runs,
            [
                DataRun { vcn: 0, lcn: Some(0x5634), clusters: 0x18 },
                DataRun { vcn: 0x18, lcn: Some(0x5624), clusters: 2 },
                DataRun { vcn: 0x1A, lcn: None, clusters: 5 },
            ]
        );
        assert!(decode_runs(&b, 0, 0x5000).is_err(), "runs past the volume are refused");
        assert!(decode_runs(&[0x21, 0x18], 0, 1 << 20).is_err(), "truncated runs are refused");
    }

    #[test]
    fn fixups_restore_stride_ends_and_detect_torn_writes() {
        let mut rec = vec![0u8; 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[4..6].copy_from_slice(&48u16.to_le_bytes());
        rec[6..8].copy_from_slice(&3u16.to_le_bytes());
        rec[48..54].copy_from_slice(&[0x07, 0x00, 0xAA, 0xBB, 0xCC, 0xDD]);
        rec[510..512].copy_from_slice(&[0x07, 0x00]);
        rec[1022..1024].copy_from_slice(&[0x07, 0x00]);
        let mut ok = rec.clone();
        apply_fixups(&mut ok, b"FILE").unwrap();
        assert_eq!(&ok[510..512], &[0xAA, 0xBB]);
        assert_eq!(&ok[1022..1024], &[0xCC, 0xDD]);
        rec[1023] = 9;
        assert!(apply_fixups(&mut rec, b"FILE").is_err());
    }

    /// A volume of 4 KiB clusters with nothing on its (tiny) disk: enough for the parsers.
    fn bare_volume() -> NtfsVolume<crate::block::MemDisk> {
        NtfsVolume {
            dev: crate::block::MemDisk::zeroed(8),
            cluster_bytes: 4096,
            total_clusters: 1 << 30,
            record_bytes: 1024,
            mft_runs: Vec::new(),
            mft_records: 0,
            upcase: Vec::new(),
        }
    }

    /// An MFT record (fixups already applied) whose first attribute is `attr`.
    fn record_with(attr: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
        rec[0x18..0x1C].copy_from_slice(&1024u32.to_le_bytes());
        rec[0x38..0x38 + attr.len()].copy_from_slice(attr);
        rec
    }

    fn refusal<T: core::fmt::Debug>(r: Result<T, FsError>) -> String {
        match r {
            Err(FsError::Corrupt(m)) => m,
            other => panic!("expected a corrupt-volume error, got {:?}", other),
        }
    }

    // Issue 14: lengths and offsets near 4 GiB overflowed the firmware's 32-bit usize (a panic
    // in stage2); on the 64-bit host they were refused all along. `cargo xtask test` runs these
    // for i686 too.
    #[test]
    fn attribute_length_near_4_gib_is_refused() {
        let mut a = vec![0u8; 0x48];
        a[..4].copy_from_slice(&ATTR_DATA.to_le_bytes());
        a[4..8].copy_from_slice(&0xFFFF_FFF8u32.to_le_bytes());
        let m = refusal(bare_volume().parse_attrs(&record_with(&a), 7));
        assert!(m.contains("MFT record 7 has a malformed attribute (length 4294967288)"), "{}", m);
    }

    #[test]
    fn resident_value_length_near_4_gib_is_refused() {
        let mut a = vec![0u8; 0x48];
        a[..4].copy_from_slice(&ATTR_DATA.to_le_bytes());
        a[4..8].copy_from_slice(&0x48u32.to_le_bytes());
        a[0x10..0x14].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        a[0x14..0x16].copy_from_slice(&0x18u16.to_le_bytes());
        let m = refusal(bare_volume().parse_attrs(&record_with(&a), 9));
        assert!(m.contains("MFT record 9: resident value of 4294967295 bytes at 24 out of bounds"), "{}", m);
    }

    #[test]
    fn index_header_offsets_near_4_gib_are_refused() {
        let vol = bare_volume();
        // An index root: the node header at 0x10 (entries offset, end offset), one last entry.
        let mut node = vec![0u8; 0x40];
        node[0x10..0x14].copy_from_slice(&0x10u32.to_le_bytes());
        node[0x14..0x18].copy_from_slice(&0x30u32.to_le_bytes());
        node[0x20 + 8..0x20 + 10].copy_from_slice(&16u16.to_le_bytes());
        node[0x20 + 12..0x20 + 14].copy_from_slice(&INDEX_ENTRY_LAST.to_le_bytes());
        assert_eq!(vol.parse_index_node(&node, 0x10).unwrap().len(), 1);
        let mut bad = node.clone();
        bad[0x10..0x14].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let m = refusal(vol.parse_index_node(&bad, 0x10));
        assert!(m.contains("start at byte 4294967296, past its end"), "{}", m);
        let mut bad = node.clone();
        bad[0x14..0x18].copy_from_slice(&0xFFFF_FFF8u32.to_le_bytes());
        assert_eq!(vol.parse_index_node(&bad, 0x10).unwrap().len(), 1, "an end past the node is clipped to it");
        bad[0x10..0x14].copy_from_slice(&0xFFFF_FFE0u32.to_le_bytes());
        assert!(refusal(vol.parse_index_node(&bad, 0x10)).contains("past its end"));
    }

    #[test]
    fn a_run_with_an_exact_multiple_of_4_gib_left_is_walked() {
        // 2^20 clusters of 4 KiB: 4 GiB, which is 0 as a 32-bit usize. The walk used that as its
        // step and never advanced, so run it on a thread and give up on a hang.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut vol = bare_volume();
            let runs = [DataRun { vcn: 0, lcn: None, clusters: 1 << 20 }, DataRun { vcn: 1 << 20, lcn: None, clusters: 1 }];
            let mut buf = vec![0xAAu8; 1024];
            let first = vol.read_runs(&runs, 0, &mut buf).map(|_| buf.iter().all(|&b| b == 0));
            // Across the end of the big run into the next one.
            let across = vol.read_runs(&runs, (4u64 << 30) - 512, &mut buf).map(|_| buf.iter().all(|&b| b == 0));
            let _ = tx.send((first, across));
        });
        let (first, across) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the run walk hangs");
        assert_eq!(first, Ok(true));
        assert_eq!(across, Ok(true));
    }

    #[test]
    fn record_size_field() {
        assert_eq!(size_from_clusters_field(-10, 4096), Some(1024));
        assert_eq!(size_from_clusters_field(2, 4096), Some(8192));
        assert_eq!(size_from_clusters_field(-128, 4096), None);
        assert_eq!(size_from_clusters_field(0, 4096), None);
    }
}
