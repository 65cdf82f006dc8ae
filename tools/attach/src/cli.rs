//! The command line of vboot-attach, apart from the program so that `cargo xtask man` can
//! generate its man page and shell completions from the same definition. clap is built with
//! few features here (no colours, no suggestions) to keep the static binary small for the
//! initramfs (docs/vboot-attach.md has the sizes).

use std::time::Duration;

use clap::Parser;

/// Options that only make sense when attaching.
const ATTACH_OPTIONS: [&str; 6] = ["drive", "device", "timeout", "read_only", "foreground", "netlink"];

#[derive(Parser, Debug)]
#[command(
    name = "vboot-attach",
    version,
    about = "Serve the disk vboot emulated at boot as /dev/nbdN (for an initramfs)",
    long_about = "Serve the disk vboot emulated at boot as /dev/nbdN (for an initramfs).\n\n\
                  Without --info or --detach: find vboot's hand-off table (through /dev/mem), the host \
                  disk, and serve drive N on an NBD device; print the device name and go to the \
                  background as @vboot-attach.",
    after_help = "Exit status: 0 on success, 1 when the work fails or is refused, 2 for a wrong command line."
)]
pub struct Cli {
    /// Print the hand-off table and exit
    #[arg(long, conflicts_with_all = ATTACH_OPTIONS, conflicts_with = "detach")]
    pub info: bool,
    /// Flush and stop serving DEVICE
    #[arg(long, value_name = "DEVICE", value_parser = parse_nbd_device, conflicts_with_all = ATTACH_OPTIONS)]
    pub detach: Option<String>,
    /// The emulated BIOS drive to serve (0x80, 128 ...)
    #[arg(long, value_name = "N", default_value = "0x80", value_parser = parse_drive)]
    pub drive: u8,
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
    /// Hand the device to the kernel through netlink instead of staying in NBD_DO_IT (which any
    /// signal ends, such as the SIGSTOP systemd sends to all processes at switch-root)
    #[arg(long)]
    pub netlink: bool,
}

/// Decimal, or hexadecimal with 0x.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_drive(s: &str) -> Result<u8, String> {
    parse_number(s).filter(|&n| n <= 0xFF).map(|n| n as u8).ok_or_else(|| "not a BIOS drive number (0x80, 128 ...)".to_string())
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
