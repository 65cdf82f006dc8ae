//! vboot-attach: give an operating system back the disk vboot emulated at boot.
//!
//! Once Linux runs its own disk drivers it no longer calls INT 13h, so the disk vboot made out
//! of an image file would vanish. This tool, run from an initramfs, reads vboot's hand-off table
//! (`docs/handoff-table.md`) through /dev/mem, finds the host disk by its identity, and serves the
//! virtual disk as /dev/nbdN through the kernel's NBD driver, with the same core library the
//! resident engine uses.

mod control;
mod dm;
mod host;
mod mapped;
mod nbd;
mod netlink;
mod vdisk;

use std::fs::{File, OpenOptions};
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use vboot::handoff::{self, Table};
use vboot_attach::cli::Cli;
use vboot_attach::drives::{self, DriveSpec};

/// What to attach, from the command line.
struct Options {
    drive: Option<DriveSpec>,
    device: Option<String>,
    timeout: Duration,
    read_only: bool,
    foreground: bool,
    /// Connect through netlink rather than staying in NBD_DO_IT (cli.rs says why).
    netlink: bool,
    /// Make `--direct`'s device-mapper devices once the NBD device serves.
    direct: bool,
}

fn main() -> ExitCode {
    // Usage errors: clap prints them with the usage and exits with status 2.
    let cli = Cli::parse();
    let result = if cli.info {
        read_table().map(|t| print_table(&t))
    } else if let Some(device) = &cli.detach {
        detach(device)
    } else if let Some(file) = &cli.pivot {
        control::pivot(file, cli.device.as_deref())
    } else {
        become_root_storage_daemon();
        let o = Options {
            drive: cli.drive,
            device: cli.device,
            timeout: cli.timeout,
            read_only: cli.read_only,
            foreground: cli.foreground,
            netlink: cli.netlink,
            direct: cli.direct,
        };
        if cli.all {
            attach_all(o)
        } else {
            read_table().and_then(|t| attach(&o, &t, drives::select(&t.drives, o.drive)?))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vboot-attach: {}", e);
            ExitCode::FAILURE
        }
    }
}

/// The server holds the root filesystem when `root=` is on the NBD device, so systemd must not kill
/// it at shutdown: it spares processes whose argv[0] starts with '@' (systemd.io
/// ROOT_STORAGE_DAEMONS). Re-run ourselves under that name; if that fails, go on as we are.
fn become_root_storage_daemon() {
    use std::os::unix::process::CommandExt;
    if std::env::args().next().is_some_and(|a| a.starts_with('@')) {
        return;
    }
    let err = std::process::Command::new("/proc/self/exe").arg0("@vboot-attach").args(std::env::args_os().skip(1)).exec();
    eprintln!("vboot-attach: warning: cannot re-run as @vboot-attach ({}); systemd may stop the server at shutdown", err);
}

fn read_table() -> Result<Table, String> {
    let mem = File::open("/dev/mem").map_err(|e| {
        format!("cannot open /dev/mem ({}): run as root, with a kernel that has /dev/mem and no lockdown", e)
    })?;
    let reserved = host::reserved_ranges()?;
    let table = handoff::locate(&mut host::phys_reader(&mem), &reserved).map_err(|e| e.to_string())?;
    // The kernel's boot time, from the same clock (the RTC).
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())));
    if let Some(btime) = btime {
        handoff::check_boot_time(&table, btime).map_err(|e| e.to_string())?;
    }
    Ok(table)
}

fn print_table(t: &Table) {
    println!(
        "vboot hand-off table at {:#x} (reserved {:#x}+{:#x}), INT 13h hook at {:#x}, boot ID {:016x}, written at Unix time {}",
        t.table_address, t.reserved_base, t.reserved_length, t.safe_hook_address, t.boot_id, t.boot_time_unix
    );
    for d in &t.drives {
        // What the tool serves first, then where it lives on the host.
        println!(
            "drive {:#04x} {} {}, {} ({} bytes), writes {}, served {}",
            d.bios_number,
            d.kind.as_str(),
            drives::file(d),
            drives::human(drives::served_bytes(d)),
            drives::served_bytes(d),
            d.write_mode.as_str(),
            drives::serve_mode(&t.drives, d)
        );
        let id = match d.host.scheme {
            handoff::HostScheme::Mbr => format!("MBR signature {:08x}", d.host.mbr_signature),
            handoff::HostScheme::Gpt => format!("GPT {}", vboot::part::format_guid(&d.host.disk_guid)),
        };
        println!(
            "  {} sectors at boot; host disk {} ({} sectors, BIOS {:#04x}), partition {} ({} sectors at {}, {})",
            d.virtual_sectors,
            id,
            d.host.sectors,
            d.host.bios_drive,
            d.partition.number,
            d.partition.sectors,
            d.partition.start_lba,
            d.filesystem.as_str()
        );
        if let Some((b, l)) = d.overlay {
            println!("  RAM overlay in {:#x}+{:#x}", b, l);
        }
        for l in &d.layers {
            println!("  layer {} {} {} bytes in {} extent(s)", l.format.as_str(), l.path, l.size_bytes, l.extents.len());
        }
    }
}

fn free_nbd() -> Result<String, String> {
    for n in 0..64 {
        let sys = format!("/sys/block/nbd{}", n);
        if !Path::new(&sys).exists() {
            break;
        }
        let size = std::fs::read_to_string(format!("{}/size", sys)).unwrap_or_default();
        if !Path::new(&format!("{}/pid", sys)).exists() && size.trim() == "0" {
            return Ok(format!("/dev/nbd{}", n));
        }
    }
    Err(String::from("no free /dev/nbdN: load the nbd module (modprobe nbd max_part=8)"))
}

/// `--all`: every drive of the table, each on the next free device; the failures are reported
/// and the others still served.
fn attach_all(o: Options) -> Result<(), String> {
    let table = read_table()?;
    let mut failed = Vec::new();
    for d in &table.drives {
        if let Err(e) = attach(&o, &table, d) {
            eprintln!("vboot-attach: drive {:#04x}: {}", d.bios_number, e);
            failed.push(format!("{:#04x}", d.bios_number));
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(format!("{} of {} drives not attached ({})", failed.len(), table.drives.len(), failed.join(", "))),
    }
}

fn attach(o: &Options, table: &Table, drive: &handoff::Drive) -> Result<(), String> {
    let found = host::find_host_disk(&drive.host, &drive.partition, o.timeout)?;
    let part_name = found.partition.clone().ok_or_else(|| {
        format!(
            "{} has no partition at sector {} of {} sectors (partition {} at boot): the partition table changed?",
            found.dev.display(),
            drive.partition.start_lba,
            drive.partition.sectors,
            drive.partition.number
        )
    })?;
    for name in [&part_name, &found.name] {
        if let Some(at) = host::mounted_read_write(name) {
            return Err(format!(
                "/dev/{} is mounted read-write on {}: writing the image under a mounted filesystem would corrupt it; \
                 unmount it or remount it read-only first (after the attach, `vboot-attach --pivot FILE` lets it be used read-write)",
                name, at
            ));
        }
    }
    let immutable = drive.write_mode == handoff::WriteMode::Immutable;
    // A CD (and the boot image of one) is read-only, whatever was asked.
    let read_only = o.read_only || drives::read_only_medium(&table.drives, drive).is_some();
    let writable = !read_only && !immutable;
    let host_file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&found.dev)
        .map_err(|e| format!("opening {}: {}", found.dev.display(), e))?;
    // --direct on a disk the server writes: the server's own writes unbuffered (vdisk.rs,
    // write_unbuffered, says why).
    let unbuffered = if o.direct && writable {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&found.dev)
            .map_err(|e| format!("opening {} with O_DIRECT (for --direct): {}", found.dev.display(), e))?;
        Some(f)
    } else {
        None
    };
    let mut disk = vdisk::VirtualDisk::open_with(drive, host_file, unbuffered, read_only)?;
    eprintln!("vboot-attach: drive {:#04x} on {} partition {}: {}", drive.bios_number, found.dev.display(), part_name, disk.description);

    // --direct: the runs and partitions, from the disk as it is before anything is served (a
    // block the server allocates later stays on NBD).
    let direct_plan = if o.direct {
        if let Some(at) = host::mounted(&part_name) {
            return Err(format!(
                "--direct: /dev/{} is mounted on {}: the device-mapper tables claim the host partition, which cannot be mounted meanwhile; unmount it first (or attach without --direct)",
                part_name, at
            ));
        }
        let started = Instant::now();
        let runs = disk.direct_runs()?;
        let partitions = disk.partitions();
        let run_sectors: u64 = runs.iter().map(|r| r.sectors).sum();
        eprintln!(
            "vboot-attach: --direct: {} of {} sectors in {} run(s) lie in place on the host disk, {} partition(s) ({} ms)",
            run_sectors,
            nbd::Backend::size_bytes(&disk) / 512,
            runs.len(),
            partitions.len(),
            started.elapsed().as_millis()
        );
        Some(mapped::Plan {
            runs,
            partitions,
            disk_sectors: nbd::Backend::size_bytes(&disk) / 512,
            host: vboot_attach::direct::HostPartition { start_lba: drive.partition.start_lba, sectors: drive.partition.sectors },
            host_name: part_name.clone(),
            read_only: nbd::Backend::read_only(&disk),
        })
    } else {
        None
    };

    let device = match o.device.clone() {
        Some(d) => d,
        None => free_nbd()?,
    };
    // The pivot's control socket (control.rs), before the fork: a second server for the device is
    // refused here.
    let listener = control::listen(&device)?;
    let info = control::ServerInfo { device: device.clone(), partition: control::device_number(&part_name)?, partition_start_lba: drive.partition.start_lba };
    let mut nbd = Some(OpenOptions::new().read(true).write(true).open(&device).map_err(|e| format!("opening {}: {} (is the nbd module loaded?)", device, e))?);
    let fd = nbd.as_ref().map_or(-1, |f| f.as_raw_fd());
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {}", e))?;
    // 512-byte blocks for a CD too: iso9660 mounts either way, and an isohybrid ISO's partition
    // table (in 512-byte sectors) reads right.
    let sectors = nbd::Backend::size_bytes(&disk) / 512;
    let mut flags = nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH;
    if nbd::Backend::read_only(&disk) {
        flags |= nbd::FLAG_READ_ONLY;
    }
    let setup = || -> std::io::Result<()> {
        nbd::ioctl(fd, nbd::NBD_SET_BLKSIZE, 512)?;
        nbd::ioctl(fd, nbd::NBD_SET_SIZE_BLOCKS, sectors)?;
        nbd::ioctl(fd, nbd::NBD_SET_FLAGS, flags)?;
        nbd::ioctl(fd, nbd::NBD_SET_SOCK, theirs.as_raw_fd() as u64)?;
        Ok(())
    };
    let index = if o.netlink {
        let index = netlink::device_index(&device).ok_or_else(|| format!("{} is not /dev/nbdN", device))?;
        // The kernel refuses a netlink connect while the device is open (EBUSY).
        nbd = None;
        Some(index)
    } else {
        setup().map_err(|e| format!("setting up {}: {} (is it in use?)", device, e))?;
        None
    };

    if !o.foreground {
        // SAFETY: no other thread runs yet; the child carries on with the same descriptors.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid > 0 {
            drop(ours);
            wait_ready(&device, pid)?;
            let Some(plan) = &direct_plan else {
                println!("{}", device);
                return Ok(());
            };
            return match mapped::set_up(&device, plan) {
                Ok(whole) => {
                    println!("{}", whole);
                    Ok(())
                }
                Err(e) => {
                    // The disk stays served, slower: say so on stdout's device and in the status.
                    println!("{}", device);
                    Err(format!("--direct failed: {}; {} is attached without it (every sector through the server)", e, device))
                }
            };
        }
        // The server must not hold the caller's stdout: `dev=$(vboot-attach)` waits for it to
        // close. Messages still go to stderr.
        if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
            // SAFETY: dup2 on two descriptors this process owns (the open /dev/null and stdin or
            // stdout); it only replaces the descriptor table entries, no Rust object refers to them.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
            }
        }
        // SAFETY: setsid takes no pointer and only moves this process to a new session.
        unsafe { libc::setsid() };
        // Only --detach (or SIGKILL) stops the server: it may hold the root filesystem.
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2] {
            // SAFETY: SIG_IGN for a catchable signal; no handler runs.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
    }
    let mut controller = control::Controller::new(listener, info)?;
    let mut fds = controller.fds();
    // --direct: the server loads the tables again when its writes put more sectors in place.
    let mut refresher = match direct_plan.as_ref().map(|plan| mapped::Refresher::new(&device, plan)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            // Serve anyway: the tables made at attach stay as they are.
            eprintln!("vboot-attach: {}: warning: --direct: {}; blocks allocated from now on stay on NBD", device, e);
            None
        }
        None => None,
    };
    if let Some(r) = &refresher {
        fds.push(r.fd());
    }
    let mut between_requests = |d: &mut vdisk::VirtualDisk| {
        let mut log = |m: String| eprintln!("vboot-attach: {}: {}", device, m);
        controller.handle(d, &mut log);
        if let Some(r) = refresher.as_mut() {
            r.tick(d, &mut log);
        }
    };
    let control = nbd::Control { fds, handle: &mut between_requests };
    let result = match index {
        Some(index) => serve_through_netlink(&device, index, ours, theirs, sectors * 512, flags, &mut disk, control),
        None => serve_in_do_it(&device, fd, ours, theirs, &mut disk, control),
    };
    drop(nbd);
    let result = served(&device, result);
    if !o.foreground {
        // The forked server ends here: with --all, the parent attaches the next drive, not it.
        if let Err(e) = &result {
            eprintln!("vboot-attach: {}", e);
        }
        std::process::exit(result.is_err() as i32);
    }
    result
}

/// Connect through netlink, in the server, so that the device's pid (which --detach waits for)
/// is the server's; the kernel keeps its own reference to the socket.
fn serve_through_netlink(
    device: &str,
    index: u32,
    mut ours: UnixStream,
    theirs: UnixStream,
    size_bytes: u64,
    flags: u64,
    disk: &mut vdisk::VirtualDisk,
    control: nbd::Control<vdisk::VirtualDisk>,
) -> std::io::Result<nbd::Stats> {
    // udev may still hold the device open (probing it after the module loaded): retry a while.
    let start = Instant::now();
    loop {
        match netlink::connect(index, theirs.as_raw_fd(), size_bytes, flags) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("connecting through netlink: {} (is it in use?)", e))),
        }
    }
    drop(theirs);
    let result = nbd::serve(&mut ours, disk, &mut |m| eprintln!("vboot-attach: {}: {}", device, m), Some(control));
    drop(ours);
    let _ = netlink::disconnect(index);
    result
}

/// The kernel's side runs in NBD_DO_IT until the socket closes; requests are served here.
fn serve_in_do_it(
    device: &str,
    fd: i32,
    mut ours: UnixStream,
    theirs: UnixStream,
    disk: &mut vdisk::VirtualDisk,
    control: nbd::Control<vdisk::VirtualDisk>,
) -> std::io::Result<nbd::Stats> {
    let theirs_fd = theirs.into_raw_fd();
    let kernel = std::thread::spawn(move || {
        let r = nbd::ioctl(fd, nbd::NBD_DO_IT, 0);
        let _ = nbd::ioctl(fd, nbd::NBD_CLEAR_QUE, 0);
        let _ = nbd::ioctl(fd, nbd::NBD_CLEAR_SOCK, 0);
        // SAFETY: `theirs_fd` came from `into_raw_fd` above: this thread owns it and nothing else
        // closes or uses it once NBD_DO_IT has returned.
        unsafe { libc::close(theirs_fd) };
        r
    });
    let result = nbd::serve(&mut ours, disk, &mut |m| eprintln!("vboot-attach: {}: {}", device, m), Some(control));
    // Closing our end ends the kernel's NBD_DO_IT.
    drop(ours);
    let _ = kernel.join();
    result
}

/// The server's last words.
fn served(device: &str, result: std::io::Result<nbd::Stats>) -> Result<(), String> {
    match result {
        Ok(stats) => {
            eprintln!(
                "vboot-attach: {} detached ({} reads, {} writes, {} flushes, {} errors)",
                device, stats.reads, stats.writes, stats.flushes, stats.errors
            );
            Ok(())
        }
        Err(e) => Err(format!("{}: {}", device, e)),
    }
}

/// In the parent: wait until the kernel serves the device, make it read the partition table.
fn wait_ready(device: &str, child: i32) -> Result<(), String> {
    let name = device.trim_start_matches("/dev/");
    let start = Instant::now();
    while !Path::new(&format!("/sys/block/{}/pid", name)).exists() {
        let mut status = 0;
        // SAFETY: `status` is a live i32 for waitpid to write; `child` is our own forked child.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            return Err(format!("the server for {} stopped before the device came up", device));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("{} did not come up within 10 s", device));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Opening the device makes the kernel scan its partitions (max_part); BLKRRPART asks again.
    if let Ok(f) = File::open(device) {
        let _ = nbd::ioctl(f.as_raw_fd(), nbd::BLKRRPART, 0);
    }
    Ok(())
}

fn detach(device: &str) -> Result<(), String> {
    let name = device.trim_start_matches("/dev/");
    let pid_path = format!("/sys/block/{}/pid", name);
    let pid = std::fs::read_to_string(&pid_path).map_err(|_| format!("{} is not attached (no {})", device, pid_path))?;
    let pid = pid.trim().to_string();
    // --direct's devices hold the NBD device: they go first, all or none.
    mapped::remove_all(device)?;
    let f = File::open(device).map_err(|e| format!("opening {}: {}", device, e))?;
    // Write back what the page cache holds for the device, then ask the kernel to disconnect:
    // it sends NBD_CMD_DISC after the requests in flight, and the server flushes and stops.
    f.sync_all().map_err(|e| format!("flushing {}: {}", device, e))?;
    nbd::ioctl(f.as_raw_fd(), nbd::NBD_DISCONNECT, 0).map_err(|e| format!("disconnecting {}: {}", device, e))?;
    drop(f);
    let start = Instant::now();
    while Path::new(&format!("/proc/{}", pid)).exists() && !zombie(&pid) {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("the server of {} (pid {}) did not stop within 30 s", device, pid));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{} detached", device);
    Ok(())
}

fn zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid)).map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')).unwrap_or(true)
}
