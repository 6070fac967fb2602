//! `idbridge man --out-dir DIR`: man pages generated from the CLI definition (clap_mangen):
//! `idbridge.1` and `idbridge-<subcommand>.1` for each subcommand. Without `--out-dir`,
//! `idbridge.1` is printed on stdout (`idbridge man | man -l -`).
//!
//! Packagers run it at build time: `idbridge man --out-dir target/man`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `idbridge man`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write every page into DIR (created if needed) instead of `idbridge.1` on stdout.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Writes the pages.
pub fn run(args: Args, cli: clap::Command) -> anyhow::Result<ExitCode> {
    let cli = cli.name("idbridge");
    match &args.out_dir {
        None => {
            clap_mangen::Man::new(cli).render(&mut std::io::stdout())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let written = write_all(&cli, dir)?;
            for p in written {
                println!("{}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders `cli` and every subcommand (recursively) into `dir`; returns the files written.
pub fn write_all(cli: &clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    clap_mangen::generate_to(cli.clone(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    written.sort();
    Ok(written)
}
