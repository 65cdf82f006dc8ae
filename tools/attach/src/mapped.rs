//! `--direct`'s device-mapper devices (docs/vboot-attach.md, "--direct"): made once the NBD
//! device serves, one for the whole disk (`/dev/mapper/vboot-nbd0`) and one per partition
//! (`/dev/mapper/vboot-nbd0p1`), each a table of `linear` targets on the host partition (the
//! runs that lie one for one on it) and on the NBD device (everything else); loaded again by the
//! server when blocks it allocated put more sectors in place ([`Refresher`]); removed by
//! `--detach` before the NBD device.

use std::fs;
use std::path::Path;

use vboot_attach::direct::{self, DirectRun, DiskPartition, HostPartition};

use crate::dm::{self, TargetLine};
use crate::host;

/// What the tables are made of, gathered from the open disk before the server forks.
#[derive(Clone)]
pub struct Plan {
    pub runs: Vec<DirectRun>,
    pub partitions: Vec<DiskPartition>,
    pub disk_sectors: u64,
    pub host: HostPartition,
    /// The host partition's /sys/class/block name (`vda1`).
    pub host_name: String,
    /// The tables refuse writes (`--read-only`, a CD).
    pub read_only: bool,
}

/// Make the devices for NBD device `nbd` (serving already). Gives the whole disk's device path.
/// On a failure the devices made so far are removed again: all or none.
pub fn set_up(nbd: &str, plan: &Plan) -> Result<String, String> {
    let nbd_name = nbd.trim_start_matches("/dev/");
    let nbd_dev = host::dev_numbers(nbd_name).ok_or_else(|| format!("{} has no device number in /sys/class/block", nbd))?;
    let host_dev = host::dev_numbers(&plan.host_name).ok_or_else(|| format!("/dev/{} has no device number in /sys/class/block", plan.host_name))?;
    let control = dm::Control::open()?;
    let devices = devices(nbd, plan);
    let mut made: Vec<(String, (u32, u32))> = Vec::new();
    // With udev running, its device-mapper rules (where installed) make /dev/mapper/NAME, and a
    // node of ours there would keep it from making its link (which systemd waits for): give it
    // a moment first, and make the node only when it did not.
    let mut udev_may_make_nodes = Path::new("/run/udev/control").exists();
    let mut make = || -> Result<(), String> {
        for (name, first_sector, sectors) in &devices {
            let (lines, summary) = table(plan, &plan.runs, *first_sector, *sectors, host_dev, nbd_dev);
            let numbers = control.create(name).map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => format!("creating the device-mapper device {}: it exists already (from an earlier attach? remove it with `dmsetup remove {}`)", name, name),
                _ => format!("creating the device-mapper device {}: {}", name, e),
            })?;
            made.push((name.clone(), numbers));
            control.load(name, &lines, plan.read_only).map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => format!(
                    "loading the table of {}: {} (/dev/{} or {} is claimed: mounted, or a partition of it mounted?)",
                    name, e, plan.host_name, nbd
                ),
                _ => format!("loading the table of {} ({} targets): {}", name, lines.len(), e),
            })?;
            control.resume(name).map_err(|e| format!("resuming {}: {}", name, e))?;
            let path = format!("/dev/mapper/{}", name);
            if udev_may_make_nodes {
                let started = std::time::Instant::now();
                while !Path::new(&path).exists() && started.elapsed() < std::time::Duration::from_secs(2) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                udev_may_make_nodes = Path::new(&path).exists();
            }
            // A busybox initramfs has no udev to make the node.
            dm::make_node(&path, numbers.0, numbers.1).map_err(|e| format!("making the node {}: {}", path, e))?;
            let dropped = match summary.runs_dropped {
                0 => String::new(),
                n => format!(", {} short runs left to {} to keep the table at {} targets", n, nbd, direct::MAX_TARGETS),
            };
            eprintln!(
                "vboot-attach: {} ({}:{}): {} of {} sectors straight to /dev/{}, the rest through {} ({} targets{}{})",
                path,
                numbers.0,
                numbers.1,
                summary.direct_sectors,
                sectors,
                plan.host_name,
                nbd,
                summary.targets,
                if plan.read_only { ", read-only" } else { "" },
                dropped
            );
        }
        Ok(())
    };
    if let Err(e) = make() {
        for (name, (major, minor)) in made.iter().rev() {
            let _ = control.remove(name);
            dm::remove_node(&format!("/dev/mapper/{}", name), *major, *minor);
        }
        return Err(e);
    }
    Ok(format!("/dev/mapper/{}", direct::device_name(nbd, None)))
}

/// The devices for `nbd`: name, first sector of the virtual disk, sectors.
fn devices(nbd: &str, plan: &Plan) -> Vec<(String, u64, u64)> {
    let mut devices = vec![(direct::device_name(nbd, None), 0, plan.disk_sectors)];
    for p in &plan.partitions {
        devices.push((direct::device_name(nbd, Some(p.number)), p.start_lba, p.sectors));
    }
    devices
}

/// One device's table from `runs`, as the DM ioctl takes it.
fn table(plan: &Plan, runs: &[DirectRun], first_sector: u64, sectors: u64, host_dev: (u32, u32), nbd_dev: (u32, u32)) -> (Vec<TargetLine>, direct::TableSummary) {
    let (targets, summary) = direct::build_table(runs, first_sector, sectors, plan.host, direct::MAX_TARGETS);
    let lines = targets
        .iter()
        .map(|t| TargetLine { start_sector: t.start_sector(), sectors: t.sectors(), target_type: "linear", params: t.linear_params(host_dev, nbd_dev) })
        .collect();
    (lines, summary)
}

/// In the server: after writes, look at the disk's in-place runs again (at most once a second,
/// less often when a look takes long), and when the blocks Linux made the server allocate put
/// more sectors in place, load the tables again (on a thread: the suspend waits for the I/O in
/// flight, which includes the server's own requests). Without it a block allocated after the
/// attach would stay on NBD for good. A disk the server does not write has nothing to do here.
pub struct Refresher {
    nbd: String,
    plan: Plan,
    host_dev: (u32, u32),
    nbd_dev: (u32, u32),
    /// The ticker thread's byte every second: the serving loop's reason to call [`Self::tick`].
    ticks: std::os::unix::net::UnixStream,
    writes_at_last_look: u64,
    next_look: std::time::Instant,
    reload: Option<std::thread::JoinHandle<Result<Option<String>, String>>>,
    /// The runs the thread is loading.
    loading: Vec<DirectRun>,
    /// Device-mapper is not there (the attach's --direct failed): nothing to refresh.
    off: bool,
}

impl Refresher {
    pub fn new(nbd: &str, plan: &Plan) -> Result<Option<Refresher>, String> {
        if plan.read_only {
            return Ok(None);
        }
        let nbd_dev = host::dev_numbers(nbd.trim_start_matches("/dev/")).ok_or_else(|| format!("{} has no device number in /sys/class/block", nbd))?;
        let host_dev = host::dev_numbers(&plan.host_name).ok_or_else(|| format!("/dev/{} has no device number", plan.host_name))?;
        let (ticks, mut ticker) = std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {}", e))?;
        ticks.set_nonblocking(true).map_err(|e| format!("socketpair: {}", e))?;
        ticker.set_nonblocking(true).map_err(|e| format!("socketpair: {}", e))?;
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            use std::io::Write;
            match ticker.write(&[0]) {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        });
        Ok(Some(Refresher {
            nbd: nbd.to_string(),
            plan: plan.clone(),
            host_dev,
            nbd_dev,
            ticks,
            writes_at_last_look: 0,
            next_look: std::time::Instant::now(),
            reload: None,
            loading: Vec::new(),
            off: false,
        }))
    }

    /// What the serving loop watches for [`Self::tick`].
    pub fn fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        self.ticks.as_raw_fd()
    }

    /// Between two requests (the disk is idle).
    pub fn tick(&mut self, disk: &mut crate::vdisk::VirtualDisk, log: &mut dyn FnMut(String)) {
        use std::io::Read;
        let mut drain = [0u8; 64];
        while let Ok(1..) = (&self.ticks).read(&mut drain) {}
        if let Some(reload) = &self.reload {
            if !reload.is_finished() {
                return;
            }
            match self.reload.take().unwrap().join().unwrap_or_else(|_| Err(String::from("the reload thread failed"))) {
                Ok(Some(done)) => {
                    self.plan.runs = std::mem::take(&mut self.loading);
                    log(done);
                }
                // The devices are not there (not made yet, or removed): look again after more
                // writes.
                Ok(None) => {}
                Err(e) => {
                    log(format!("--direct: {}; the tables stay as they were", e));
                    self.off = true;
                }
            }
        }
        let now = std::time::Instant::now();
        if self.off || disk.writes_served == self.writes_at_last_look || now < self.next_look {
            return;
        }
        self.writes_at_last_look = disk.writes_served;
        let runs = match disk.direct_runs() {
            Ok(runs) => runs,
            Err(e) => {
                log(format!("--direct: looking at the in-place runs again: {}", e));
                self.off = true;
                return;
            }
        };
        // Once a second, or ten times as long as the look took (a big disk with many runs).
        self.next_look = std::time::Instant::now() + std::cmp::max(std::time::Duration::from_secs(1), now.elapsed() * 10);
        if runs == self.plan.runs {
            return;
        }
        let tables: Vec<(String, Vec<TargetLine>, direct::TableSummary)> = devices(&self.nbd, &self.plan)
            .into_iter()
            .map(|(name, first, sectors)| {
                let (lines, summary) = table(&self.plan, &runs, first, sectors, self.host_dev, self.nbd_dev);
                (name, lines, summary)
            })
            .collect();
        let before: u64 = self.plan.runs.iter().map(|r| r.sectors).sum();
        let host_name = self.plan.host_name.clone();
        self.loading = runs;
        self.reload = Some(std::thread::spawn(move || reload(tables, before, &host_name)));
    }
}

/// Load each table, then suspend and resume its device (the new table goes live at the
/// resume). Ok(None) when the devices do not exist.
fn reload(tables: Vec<(String, Vec<TargetLine>, direct::TableSummary)>, direct_sectors_before: u64, host_name: &str) -> Result<Option<String>, String> {
    let control = dm::Control::open()?;
    for (name, lines, _) in &tables {
        match control.load(name, lines, false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
            Err(e) => return Err(format!("loading the table of {} again: {}", name, e)),
        }
        control.suspend(name).map_err(|e| format!("suspending {}: {}", name, e))?;
        // A device left suspended would hang every reader: try the resume again before giving up.
        let mut resumed = control.resume(name);
        for _ in 0..10 {
            if resumed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            resumed = control.resume(name);
        }
        resumed.map_err(|e| format!("resuming {}: {} (it is suspended: `dmsetup resume {}`)", name, e, name))?;
    }
    let (name, _, whole) = &tables[0];
    Ok(Some(format!(
        "--direct: /dev/mapper/{} loaded again: {} sectors straight to /dev/{} (before: {}), {} targets",
        name, whole.direct_sectors, host_name, direct_sectors_before, whole.targets
    )))
}

/// Every dm device: (name, sysfs name `dm-N`).
fn dm_devices() -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|sys| sys.starts_with("dm-"))
        .map(|sys| (fs::read_to_string(Path::new("/sys/block").join(&sys).join("dm/name")).unwrap_or_default().trim().to_string(), sys))
        .collect()
}

/// `--direct`'s devices for `nbd`, found by name (a table wholly in place has no NBD target and
/// does not hold `nbd`), partitions before the whole disk; and the sysfs names of the other
/// devices holding `nbd`.
fn ours_and_others(nbd: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut ours: Vec<(String, String)> = dm_devices().into_iter().filter(|(name, _)| direct::is_ours(name, nbd)).collect();
    ours.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    let dir = Path::new("/sys/block").join(nbd.trim_start_matches("/dev/")).join("holders");
    let others = fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|sys| !ours.iter().any(|(_, s)| s == sys)).collect())
        .unwrap_or_default();
    (ours, others)
}

/// `--direct`'s devices on `nbd` (for --pivot's refusal).
pub fn direct_devices(nbd: &str) -> Vec<String> {
    ours_and_others(nbd).0.into_iter().map(|(name, _)| name).collect()
}

/// Remove `--direct`'s devices on `nbd` before it is detached: none is removed unless all can be
/// (none open). A device holding `nbd` that is not ours is refused too: the detach would pull
/// the disk from under it.
pub fn remove_all(nbd: &str) -> Result<(), String> {
    let (ours, others) = ours_and_others(nbd);
    if !others.is_empty() {
        let names: Vec<String> = others
            .iter()
            .map(|sys| match fs::read_to_string(Path::new("/sys/block").join(sys).join("dm/name")) {
                Ok(name) => format!("{} ({})", name.trim(), sys),
                Err(_) => sys.clone(),
            })
            .collect();
        return Err(format!("{} is held by {}, not vboot-attach's: remove that first; nothing was detached", nbd, names.join(", ")));
    }
    if ours.is_empty() {
        return Ok(());
    }
    let control = dm::Control::open()?;
    let mut busy = Vec::new();
    for (name, _) in &ours {
        match control.open_count(name) {
            Ok(0) => {}
            Ok(n) => busy.push(format!("/dev/mapper/{} (open {} time{})", name, n, if n == 1 { "" } else { "s" })),
            Err(e) => return Err(format!("the status of /dev/mapper/{}: {}; nothing was detached", name, e)),
        }
    }
    if !busy.is_empty() {
        return Err(format!("{} in use (mounted?): unmount first; nothing was detached", busy.join(", ")));
    }
    let mut removed = Vec::new();
    for (name, sys) in &ours {
        let numbers = host::dev_numbers(sys);
        // EBUSY with no opener: the server is loading the table again just now (Refresher).
        let mut result = control.remove(name);
        for _ in 0..50 {
            match &result {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && control.open_count(name).is_ok_and(|n| n == 0) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    result = control.remove(name);
                }
                _ => break,
            }
        }
        result.map_err(|e| {
            let before = if removed.is_empty() { String::from("nothing was detached") } else { format!("{} removed before, {} still attached", removed.join(", "), nbd) };
            format!("removing /dev/mapper/{}: {}; {}", name, e, before)
        })?;
        if let Some((major, minor)) = numbers {
            dm::remove_node(&format!("/dev/mapper/{}", name), major, minor);
        }
        removed.push(format!("/dev/mapper/{}", name));
    }
    eprintln!("vboot-attach: removed {}", removed.join(", "));
    Ok(())
}
