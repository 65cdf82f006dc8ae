//! The command line of vdisk, apart from the program so that `cargo xtask man` can generate its
//! man page and shell completions from the same definition.

use std::ffi::OsStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use vboot::image::create::Variant;

#[derive(Parser, Debug)]
#[command(
    name = "vdisk",
    version,
    about = "Create, inspect, check, map, snapshot and convert virtual disk images",
    long_about = "Create, inspect, check, map, snapshot and convert virtual disk images (raw, VHD, VMDK, \
                  VDI) and their differencing chains, and add or remove write slack.",
    after_help = "SIZE: bytes, or a number with K, M, G or T (binary units), e.g. 64M.\n\
                  Exit status: 0 on success, 1 when `check` finds problems, 2 for a failure or a wrong command line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How `info` and `map` print; qemu-img's `--output` spelling.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned text for people
    Human,
    /// JSON (schema in docs/vdisk.md)
    Json,
}

/// `--json` or `--output json|human`.
#[derive(Args, Debug)]
pub struct Output {
    /// Print JSON (the same as --output json)
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Output format, as qemu-img spells it
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub output: Option<OutputFormat>,
}

impl Output {
    pub fn is_json(&self) -> bool {
        self.json || self.output == Some(OutputFormat::Json)
    }
}

/// Where a chain's parents are looked for, and how strictly.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// Also look for parents in DIR
    #[arg(long, value_name = "DIR")]
    pub parent_dir: Option<String>,
    /// Open VMDK children whose parent's CID changed (warn instead of refusing)
    #[arg(long)]
    pub lenient_cid: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a new image (or, with --parent, a differencing child)
    Create {
        /// The image file to create
        file: String,
        /// The kind of image [default: from the extension; with --parent, the parent's format]
        #[arg(long, value_name = "VARIANT", value_parser = VariantParser)]
        format: Option<Variant>,
        /// Virtual size (not with --parent: a child has its parent's size)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
        /// Make a differencing child of PARENT
        #[arg(long, value_name = "PARENT")]
        parent: Option<String>,
        /// Write slack to allocate at the end of a sparse image
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        reserve: Option<u64>,
        /// Keep the size exactly (VHD would otherwise round it to a CHS geometry)
        #[arg(long)]
        exact_size: bool,
        /// Also look for the parent's own parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
    },
    /// Describe the image and its whole chain
    Info {
        /// The image (the leaf of its chain)
        file: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Verify structures; exit 1 if problems are found
    Check {
        /// The image (the leaf of its chain)
        file: String,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Virtual sector ranges -> layer and file offset
    Map {
        /// The image (the leaf of its chain)
        file: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Make NEW a differencing child of IMAGE
    Snapshot {
        /// The image (the leaf of its chain) to take the snapshot of
        image: String,
        /// The new differencing child
        new: String,
        /// Write slack to allocate at the end of the child
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        reserve: Option<u64>,
        /// Also look for parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
    },
    /// Make the throwaway differencing child vboot's `immutable` boots through (needed on NTFS
    /// and ext hosts, where vboot makes no files)
    #[command(
        long_about = "Make the throwaway differencing child that vboot's `immutable` boots IMAGE through: \
                      IMAGE's format, beside it as NAME.immutable.EXT (or --child PATH, which the \
                      vboot line then names with immutable_child=). Every start of vboot empties it. On \
                      FAT and exFAT vboot makes it itself at the first immutable boot; on NTFS and ext, \
                      where vboot changes no filesystem metadata, make it here once. Its write slack \
                      (--reserve) is how much one boot can write on such a host. A raw IMAGE gets a \
                      VMDK child over NAME.immutable-raw.vmdk, a flat VMDK descriptor naming it."
    )]
    ImmutableChild {
        /// The image (the leaf of its chain) that boots with `immutable`
        image: String,
        /// Where to make the child [default: beside IMAGE, NAME.immutable.EXT]
        #[arg(long, value_name = "PATH")]
        child: Option<String>,
        /// Write slack to allocate in the child: the most one boot can write where vboot cannot grow the file (NTFS, ext)
        #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
        reserve: u64,
        /// Also look for parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
    },
    /// Copy the chain's content into a new image
    Convert {
        /// The image (the leaf of its chain) to copy
        source: String,
        /// The new image; must not exist
        target: String,
        /// The kind of image to make [default: from TARGET's extension]
        #[arg(long, value_name = "VARIANT", value_parser = VariantParser)]
        format: Option<Variant>,
        /// Write slack to allocate at the end of a sparse target
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        reserve: Option<u64>,
        /// Also look for SOURCE's parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
        /// Accepted for symmetry with create: the target always has the source's exact size
        #[arg(long)]
        exact_size: bool,
    },
    /// Fold CHILD's data into its parent (re-run if interrupted)
    Merge {
        /// The differencing image
        child: String,
        /// Also look for parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
    },
    /// Empty a differencing image: it reads as its parent again
    Restore {
        /// The differencing image
        child: String,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Accept the parent as it is now (VHD time stamp, VMDK parentCID, VDI parent modification UUID)
    Relink {
        /// The differencing image
        child: String,
        /// Also look for parents in DIR
        #[arg(long, value_name = "DIR")]
        parent_dir: Option<String>,
    },
    /// Add SIZE bytes of write slack to a sparse image
    Reserve {
        /// The sparse image
        file: String,
        /// How much slack to add
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Remove unused slack from a sparse image
    Trim {
        /// The sparse image
        file: String,
    },
    /// Write a grub.cfg entry for every bootable image under DIR (a mounted host partition)
    #[command(long_about = "Write a grub.cfg entry for every bootable image under DIR, the directory where a host \
                            partition is mounted: ISOs with an El Torito boot image (cdrom=), floppy images \
                            (floppy=), VHD/VMDK/VDI chains (harddisk=, the leaf only) and raw disks whose first \
                            sector carries a boot signature. The entries go between two marker lines; \
                            everything else in the file is kept as it is, so running it again is safe.")]
    Mkconfig {
        /// Where the host partition is mounted
        dir: String,
        /// The grub.cfg to write [default: the one vboot reads under DIR (boot/grub/grub.cfg,
        /// grub/grub.cfg or grub.cfg), else DIR/boot/grub/grub.cfg]
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<String>,
        /// Print the resulting grub.cfg instead of writing it
        #[arg(long)]
        dry_run: bool,
    },
}

/// Bytes, or a number with K, M, G or T (binary units); a trailing B is allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        Some('B') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("`{}` is not a size (use bytes or K/M/G/T)", s))?;
    n.checked_mul(mult).ok_or_else(|| format!("size `{}` is too large", s))
}

/// `--format VARIANT`: refuses with the list of names, and offers them to shell completion.
#[derive(Clone)]
struct VariantParser;

impl TypedValueParser for VariantParser {
    type Value = Variant;

    fn parse_ref(&self, cmd: &clap::Command, _arg: Option<&clap::Arg>, value: &OsStr) -> Result<Variant, clap::Error> {
        let name = value.to_string_lossy();
        Variant::parse(&name).ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidValue, format!("unknown format `{}`; one of: {}\n", name, Variant::NAMES.join(", "))).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(Variant::NAMES.iter().map(PossibleValue::new)))
    }
}
