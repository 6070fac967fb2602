//! `idbridge completions SHELL`: a completion script generated from the CLI definition
//! (clap_complete), so it can never disagree with the flags.
//!
//! ```sh
//! idbridge completions bash > ~/.local/share/bash-completion/completions/idbridge
//! idbridge completions zsh  > "${fpath[1]}/_idbridge"
//! idbridge completions fish > ~/.config/fish/completions/idbridge.fish
//! ```

use std::process::ExitCode;

use clap_complete::Shell;

/// Arguments of `idbridge completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

/// Writes the script on stdout.
pub fn run(args: Args, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    clap_complete::generate(args.shell, &mut cli, "idbridge", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
