//! `mochi model check DIR` (verify a model directory and say exactly what is wrong) and
//! `mochi model create-tiny DIR` (write the embedded tiny model, as `mochi up` does).

use std::path::PathBuf;

use anyhow::{Result, bail};
use gpu_node::model_dir::{check, tiny};

/// `mochi model ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Verify a model directory in the diffusers layout: files present and complete, every
    /// tensor the configs imply with the right shape and dtype. Exits non-zero on problems.
    Check {
        /// The model directory (e.g. a download of `genmo/mochi-1-preview`).
        dir: PathBuf,
    },
    /// Write (or repair) the embedded tiny model with random weights in DIR; its videos
    /// are noise.
    CreateTiny {
        /// Where to write it.
        dir: PathBuf,
    },
}

/// Runs a `mochi model` command.
pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Check { dir } => {
            let report = check::check(&dir);
            print!("{report}");
            if !report.is_ok() {
                bail!(
                    "{} is not a usable model directory ({} problem(s) above)",
                    dir.display(),
                    report.problems.len()
                );
            }
            Ok(())
        }
        ModelCommand::CreateTiny { dir } => {
            let prepared = tiny::ensure(&dir).map_err(anyhow::Error::msg)?;
            let what = match prepared {
                tiny::Prepared::Created => "created".to_owned(),
                tiny::Prepared::Reused => "already complete".to_owned(),
                tiny::Prepared::Repaired(files) => format!("repaired ({})", files.join(", ")),
            };
            eprintln!(
                "{}: {what}; random weights, its videos are noise",
                tiny::TINY_MODEL_NAME
            );
            println!("{}", dir.display());
            Ok(())
        }
    }
}
