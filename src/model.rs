//! `mochi model check DIR` (verify a model directory and say exactly what is wrong),
//! `mochi model create-tiny DIR` (write the embedded tiny model, as `mochi up` does),
//! `mochi model create-reduced DIR` (the release's key names and structure at a reduced
//! width, in either layout) and
//! `mochi model run` (one component on tensors named as the reference names them, to check
//! a checkpoint or a build against the Python reference).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mochi_model::model_dir::reduced::Layout;
use mochi_model::model_dir::{check, reduced, tiny};
use mochi_model::run::{Component, Reference, RunOptions};

/// `mochi model ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Verify a model directory (diffusers' layout, genmo's, or both): files present and
    /// complete, every tensor the configs (or, for genmo's files, the shapes) imply with the
    /// right shape and dtype. Exits non-zero on problems.
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
    /// Write the release's structure (all 48 transformer blocks, the T5 encoder's 24
    /// layers, the decoder's stages) at a reduced width with random weights in DIR, in
    /// diffusers' layout (sharded, with the bf16 variant) or genmo's (`dit.safetensors`,
    /// `decoder.safetensors`, the T5 folder): to try loaders and checks on the release's
    /// names without its weights.
    CreateReduced {
        /// Where to write it.
        dir: PathBuf,
        /// `diffusers` or `genmo`.
        #[arg(long, default_value = "diffusers", value_parser = parse_layout)]
        layout: Layout,
    },
    /// Run one component on the tensors of a safetensors file, named as the reference's
    /// forward names them, and write its outputs: `transformer` takes `hidden_states`,
    /// `encoder_hidden_states`, `timestep`, `encoder_attention_mask` and gives `sample`;
    /// `vae` takes `z` and gives `sample`; `text` takes `input_ids` (and `attention_mask`)
    /// and gives `last_hidden_state`.
    Run {
        /// The model directory (diffusers' layout or genmo's).
        #[arg(long)]
        model_dir: PathBuf,
        /// `transformer`, `vae` or `text`.
        #[arg(long, value_parser = parse_component)]
        component: Component,
        /// The input tensors (safetensors).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors, f32).
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype of the weights: `f32` or `bf16`.
        #[arg(long, default_value = "f32", value_parser = parse_dtype)]
        dtype: candle_core::DType,
        /// `cpu`, or `cuda` (device 0; needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Which implementation to follow where they differ (the VAE's frame dropping, the
        /// transformer's text stream under a mask that is not a prefix): `diffusers` or
        /// `genmo`.
        #[arg(long, default_value = "diffusers", value_parser = parse_reference)]
        reference: Reference,
    },
}

fn parse_component(name: &str) -> Result<Component, String> {
    Component::parse(name).ok_or_else(|| {
        let names: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
        format!(
            "unknown component `{name}`; use one of {}",
            names.join(", ")
        )
    })
}

fn parse_layout(name: &str) -> Result<Layout, String> {
    Layout::parse(name).ok_or_else(|| format!("unknown layout `{name}`; use diffusers or genmo"))
}

fn parse_dtype(name: &str) -> Result<candle_core::DType, String> {
    match name {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        _ => Err(format!("unknown dtype `{name}`; use f32 or bf16")),
    }
}

fn parse_reference(name: &str) -> Result<Reference, String> {
    match name {
        "diffusers" => Ok(Reference::Diffusers),
        "genmo" => Ok(Reference::Genmo),
        _ => Err(format!(
            "unknown reference `{name}`; use diffusers or genmo"
        )),
    }
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
        ModelCommand::Run {
            model_dir,
            component,
            inputs,
            out,
            dtype,
            device,
            reference,
        } => {
            let device = match device.as_str() {
                "cpu" => candle_core::Device::Cpu,
                "cuda" => candle_core::Device::new_cuda(0)
                    .context("cannot open CUDA device 0 (a build with --features cuda on a GPU)")?,
                other => bail!("unknown device `{other}`; use cpu or cuda"),
            };
            let tensors = candle_core::safetensors::load(&inputs, &candle_core::Device::Cpu)
                .with_context(|| format!("cannot read the inputs {}", inputs.display()))?;
            let options = RunOptions {
                dtype,
                device,
                reference,
            };
            let outputs = mochi_model::run::run(&model_dir, component, &tensors, &options)
                .with_context(|| format!("the {} did not run", component.name()))?;
            let outputs: std::collections::HashMap<String, candle_core::Tensor> = outputs
                .into_iter()
                .map(|(name, tensor)| Ok((name, tensor.to_device(&candle_core::Device::Cpu)?)))
                .collect::<candle_core::Result<_>>()?;
            for (name, tensor) in &outputs {
                eprintln!("{name}: {:?} f32", tensor.dims());
            }
            candle_core::safetensors::save(&outputs, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", out.display());
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
        ModelCommand::CreateReduced { dir, layout } => {
            reduced::write(&dir, layout).map_err(anyhow::Error::msg)?;
            eprintln!(
                "the release's structure at a reduced width ({layout:?} layout); random weights"
            );
            println!("{}", dir.display());
            Ok(())
        }
    }
}
