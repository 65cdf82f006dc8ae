//! The command line of vboot-attach, apart from the program so that `cargo xtask man` can
//! generate its man page and shell completions from the same definition. clap is built with
//! few features here (no colours, no suggestions) to keep the static binary small for the
//! initramfs (docs/vboot-attach.md has the sizes).

use std::time::Duration;

use clap::Parser;

use crate::drives::DriveSpec;

/// What --pivot cannot go with (it takes --device).
const PIVOT_CONFLICTS: [&str; 9] = ["info", "detach", "drive", "timeout", "read_only", "foreground", "all", "netlink", "direct"];

/// Options that only make sense when attaching.
const ATTACH_OPTIONS: [&str; 8] = ["drive", "device", "timeout", "read_only", "foreground", "all", "netlink", "direct"];

#[derive(Parser, Debug)]
#[command(
    name = "vboot-attach",
    version,
    about = "Serve the disk vboot emulated at boot as /dev/nbdN (for an initramfs)",
    long_about = "Serve the disk vboot emulated at boot as /dev/nbdN (for an initramfs).\n\n\
                  Without --info or --detach: find vboot's hand-off table (through /dev/mem), the host \
                  disk, and serve one emulated drive (a hard disk, a CD from an ISO file, read-only, \
                  or a floppy image) on an NBD device; print the device name and go to the \
                  background as @vboot-attach.\n\n\
                  With --pivot FILE: make the running server serve the image through the host \
                  filesystem, mounted read-only, instead of the raw sectors of the host disk, after \
                  checking that FILE (and its parents) are the files of the hand-off table, at the \
                  same sectors; it remounts the filesystem read-write itself. Then the host \
                  partition stays usable while Linux runs (docs/vboot-attach.md, \"The pivot\").",
    after_help = "Exit status: 0 on success, 1 when the work fails or is refused, 2 for a wrong command line."
)]
pub struct Cli {
    /// Print the hand-off table and exit
    #[arg(long, conflicts_with_all = ATTACH_OPTIONS, conflicts_with = "detach")]
    pub info: bool,
    /// Flush and stop serving DEVICE
    #[arg(long, value_name = "DEVICE", value_parser = parse_nbd_device, conflicts_with_all = ATTACH_OPTIONS)]
    pub detach: Option<String>,
    /// Switch the running server to FILE, the image through the host partition mounted
    /// read-only (a chain's leaf; the parents are the table's); with --device, that server
    #[arg(long, value_name = "FILE", conflicts_with_all = PIVOT_CONFLICTS)]
    pub pivot: Option<std::path::PathBuf>,
    /// The emulated drive to serve: a BIOS number (0x80, 0xE0, 0x00 ...) or a kind (harddisk,
    /// cdrom, floppy: the first drive of that kind) [default: 0x80, else the table's first drive]
    #[arg(long, value_name = "N|KIND", value_parser = DriveSpec::parse)]
    pub drive: Option<DriveSpec>,
    /// The NBD device to serve it on [default: the first free one]
    #[arg(long, value_name = "DEVICE", value_parser = parse_nbd_device)]
    pub device: Option<String>,
    /// How long to wait for the host disk to appear
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Serve the disk read-only
    #[arg(long)]
    pub read_only: bool,
    /// Stay in the foreground instead of going to the background
    #[arg(long)]
    pub foreground: bool,
    /// Serve every drive of the table, each on the next free NBD device (one line each)
    #[arg(long, conflicts_with_all = ["drive", "device", "foreground"])]
    pub all: bool,
    /// Hand the device to the kernel through netlink instead of staying in NBD_DO_IT (which any
    /// signal ends, such as the SIGSTOP systemd sends to all processes at switch-root)
    #[arg(long)]
    pub netlink: bool,
    /// Also make device-mapper devices (/dev/mapper/vboot-nbdN, vboot-nbdNpM per partition) that
    /// send the image's sectors lying in place on the host disk straight to it, and the rest
    /// through the NBD device; print the whole disk's instead of /dev/nbdN. Needs dm-mod, and the
    /// host partition unmounted (the tables claim it until --detach)
    #[arg(long, conflicts_with = "foreground")]
    pub direct: bool,
}

/// Decimal, or hexadecimal with 0x.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    parse_number(s).map(Duration::from_secs).ok_or_else(|| "not a number of seconds".to_string())
}

fn parse_nbd_device(s: &str) -> Result<String, String> {
    if s.starts_with("/dev/nbd") {
        Ok(s.to_string())
    } else {
        Err("must be an NBD device, /dev/nbdN".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vboot::handoff::DriveKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vboot-attach").chain(args.iter().copied()))
    }

    #[test]
    fn drive_by_number_or_kind_and_all() {
        assert_eq!(parse(&[]).unwrap().drive, None);
        assert_eq!(parse(&["--drive", "0xE0"]).unwrap().drive, Some(DriveSpec::Number(0xE0)));
        assert_eq!(parse(&["--drive", "cdrom"]).unwrap().drive, Some(DriveSpec::Kind(DriveKind::Cdrom)));
        assert_eq!(parse(&["--drive", "floppy", "--read-only"]).unwrap().drive, Some(DriveSpec::Kind(DriveKind::Floppy)));
        assert!(parse(&["--all"]).unwrap().all);
        assert!(parse(&["--direct", "--read-only"]).unwrap().direct);
        assert_eq!(parse(&["--pivot", "/host/vm/x.vhd", "--device", "/dev/nbd1"]).unwrap().pivot.as_deref(), Some(std::path::Path::new("/host/vm/x.vhd")));
        for bad in [&["--pivot", "/x", "--drive", "0x80"][..], &["--pivot", "/x", "--detach", "/dev/nbd0"], &["--pivot", "/x", "--info"], &["--drive", "cd"], &["--all", "--drive", "0x80"], &["--all", "--device", "/dev/nbd1"], &["--info", "--all"], &["--info", "--drive", "cdrom"], &["--direct", "--foreground"], &["--pivot", "/x", "--direct"], &["--detach", "/dev/nbd0", "--direct"]] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{:?}: {}", bad, e);
        }
    }
}
