//! `cargo xtask man`: man pages and shell completions of the three host tools, generated from
//! their clap definitions (each tool's `cli` module), into `target/man/` and
//! `target/completions/{bash,zsh,fish}/`. `cargo xtask build` runs it too; `cargo xtask deb`
//! packages the result.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The tools and their command-line definitions.
pub fn tool_commands() -> Vec<clap::Command> {
    vec![vboot_install::cli::Cli::command(), vdisk::cli::Cli::command(), vboot_attach::cli::Cli::command()]
}

pub fn man_dir() -> PathBuf {
    crate::root().join("target/man")
}

pub fn completions_dir() -> PathBuf {
    crate::root().join("target/completions")
}

/// The shells, the directory name under target/completions/, and the name the completion file
/// of TOOL has there (what Debian's bash-completion, zsh and fish look for).
pub const SHELLS: [(Shell, &str); 3] = [(Shell::Bash, "bash"), (Shell::Zsh, "zsh"), (Shell::Fish, "fish")];

pub fn completion_file_name(shell: Shell, tool: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{}", tool),
        Shell::Fish => format!("{}.fish", tool),
        _ => tool.to_string(),
    }
}

pub fn generate() -> Result<(), String> {
    let man = man_dir();
    let _ = std::fs::remove_dir_all(&man);
    create_dir(&man)?;
    for cmd in tool_commands() {
        // One page per tool and one per subcommand (vdisk-create.1 ...), as git does.
        clap_mangen::generate_to(cmd, &man).map_err(|e| format!("writing man pages into {}: {}", man.display(), e))?;
    }
    for (shell, dir_name) in SHELLS {
        let dir = completions_dir().join(dir_name);
        let _ = std::fs::remove_dir_all(&dir);
        create_dir(&dir)?;
        for mut cmd in tool_commands() {
            let name = cmd.get_name().to_string();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut script);
            let path = dir.join(completion_file_name(shell, &name));
            std::fs::write(&path, script).map_err(|e| format!("writing {}: {}", path.display(), e))?;
        }
    }
    println!("man pages in {}, shell completions in {}", man.display(), completions_dir().display());
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {}", dir.display(), e))
}
