//! `ficus-sidecar`: the per-pod proxy of the Ficus mesh.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match ficus_sidecar::cli::Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // --help and --version print and exit 0; bad flags exit 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    match &args.command {
        Some(ficus_sidecar::cli::SidecarCommand::Redirect(redirect)) => {
            ExitCode::from(ficus_sidecar::redirect::run(redirect))
        }
        None => ExitCode::from(ficus_sidecar::app::run(args)),
    }
}
