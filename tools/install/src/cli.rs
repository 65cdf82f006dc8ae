//! The command line of vboot-install, apart from the program so that `cargo xtask man` can
//! generate its man page and shell completions from the same definition.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where the Debian package puts stage1.bin, stage2.bin and engine.bin.
pub const PACKAGED_STAGE_DIR: &str = "/usr/lib/vboot";

#[derive(Parser, Debug)]
#[command(
    name = "vboot-install",
    version,
    about = "Install, uninstall and inspect vboot in a disk or disk image",
    long_about = "Install, uninstall and inspect vboot, a legacy-BIOS boot loader that boots virtual disk \
                  images, in a disk or disk image.\n\n\
                  DISK is a whole disk: a block device (/dev/sdb) or a disk image file. Every check runs \
                  before the first write; a refusal writes nothing.",
    after_help = "Exit status: 0 on success, 1 when the work fails or is refused, 2 for a wrong command line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write stage1 into sector 0 (keeping the disk signature and partition table) and stage2
    /// into the gap after the MBR, or into the BIOS boot partition (EF02) on GPT
    Install {
        /// The whole disk (block device or image file)
        #[arg(value_name = "DISK")]
        disk: PathBuf,
        /// The partition holding grub.cfg, GRUB numbering (1-4 primary, 5+ logical, GPT entries
        /// from 1); default: the active partition, else the first partition with a filesystem
        /// vboot reads
        #[arg(long, value_name = "N", value_parser = parse_partition)]
        partition: Option<u32>,
        /// Overwrite data in the gap or BIOS boot partition that is not an earlier vboot
        #[arg(long)]
        force: bool,
        /// Make stage1 load stage2 with CHS reads, for BIOSes with broken extensions
        #[arg(long)]
        force_chs: bool,
        /// Where stage1.bin, stage2.bin and engine.bin are [default: $VBOOT_STAGE_DIR, else
        /// ../vboot next to this program (target/vboot in a source tree), else /usr/lib/vboot]
        #[arg(long, value_name = "DIR")]
        stage_dir: Option<PathBuf>,
        /// The grub.cfg vboot will read, as a file here (such as /mnt/boot/grub/grub.cfg on the
        /// mounted partition): when the sector 0 being replaced holds another boot loader, an entry
        /// that starts it (`chainloader --original-mbr`) is appended to it [default: the entry is
        /// printed, to add by hand]
        #[arg(long, value_name = "FILE")]
        grub_cfg: Option<PathBuf>,
        /// Neither append nor print the entry that starts the boot loader being replaced
        #[arg(long, conflicts_with = "grub_cfg")]
        no_original_mbr_entry: bool,
        /// Check and show what would be written; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Put back the sector 0 saved at install time (keeping the current partition table) and
    /// clear the gap
    Uninstall {
        /// The whole disk (block device or image file)
        #[arg(value_name = "DISK")]
        disk: PathBuf,
        /// Check and show what would be written; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what is installed, its version and where
    Status {
        /// The whole disk (block device or image file)
        #[arg(value_name = "DISK")]
        disk: PathBuf,
    },
}

fn parse_partition(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| "not a partition number".to_string())?;
    if n == 0 {
        return Err("partitions are numbered from 1, as in GRUB".into());
    }
    Ok(n)
}
