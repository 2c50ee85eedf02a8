//! VAE decode time and peak memory vs frame count, in three modes: whole, streaming
//! (one latent frame per chunk, causal-conv caches) and streaming + spatial tiling.
//!
//! `RAYON_NUM_THREADS=2 cargo run -p mochi-model --example vae_bench -- [OPTIONS]`
//!
//! Options (defaults in brackets):
//! `--channels 32,64,128,192` decoder widths, high resolution first [a quarter of the
//! release's 128,256,512,768, with the release's res-block counts 3,3,4,6,3];
//! `--latent 16x16` latent height × width [128×128 pixels];
//! `--frames 1,2,4,8,16` latent frame counts [→ 1, 7, 19, 43, 91 video frames];
//! `--modes whole,stream,tiled` (also `tiled-t`: the time-major tiled stream, all
//! tiles advanced one chunk at a time); `--chunk 1` latent frames per streamed chunk;
//! `--tile 10 --stride 8` tile and stride in latent pixels [2×2 tiles, 16-pixel blend].
//!
//! Method: every (mode, frames) point runs in a fresh child process (this binary with
//! `--point MODE FRAMES`), which builds the decoder with random weights (diffusers
//! naming, written to a temporary safetensors file and loaded by the real loader, then
//! unmapped), draws the latents, resets the kernel's peak-RSS counter
//! (`/proc/self/clear_refs` ← 5, which resets `VmHWM`), reads `VmRSS` as the baseline,
//! decodes once and reads `VmHWM`. "peak − base" is what the decode itself added, output
//! tensor included (3 × frames × H × W f32, listed separately). Linux only; CPU.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use mochi_model::model::vae::tiling::TileConfig;
use mochi_model::model::vae::weights::VaeWeights;
use mochi_model::model::vae::{VaeConfig, VaeDecoder};

#[derive(Debug, Clone)]
struct Options {
    channels: Vec<usize>,
    latent: (usize, usize),
    frames: Vec<usize>,
    modes: Vec<String>,
    chunk: usize,
    tile: usize,
    stride: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            channels: vec![32, 64, 128, 192],
            latent: (16, 16),
            frames: vec![1, 2, 4, 8, 16],
            modes: vec!["whole".into(), "stream".into(), "tiled".into()],
            chunk: 1,
            tile: 10,
            stride: 8,
        }
    }
}

fn list(value: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad number {v}"))
        })
        .collect()
}

fn parse(args: &[String]) -> (Options, Option<(String, usize)>) {
    let mut options = Options::default();
    let mut point = None;
    let mut i = 0;
    while i < args.len() {
        let value = |k: usize| -> &str {
            args.get(i + k)
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--channels" => options.channels = list(value(1)),
            "--latent" => {
                let (h, w) = value(1).split_once('x').expect("--latent HxW");
                options.latent = (list(h)[0], list(w)[0]);
            }
            "--frames" => options.frames = list(value(1)),
            "--modes" => options.modes = value(1).split(',').map(String::from).collect(),
            "--chunk" => options.chunk = list(value(1))[0],
            "--tile" => options.tile = list(value(1))[0],
            "--stride" => options.stride = list(value(1))[0],
            "--point" => {
                point = Some((value(1).to_string(), list(value(2))[0]));
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    (options, point)
}

fn config(options: &Options) -> VaeConfig {
    VaeConfig {
        block_out_channels: options.channels.clone(),
        ..VaeConfig::mochi_1_preview()
    }
}

/// Random decoder weights in diffusers naming (`decoder.` prefix), scaled 1/√fan-in so
/// activations stay O(1) (no overflow or denormals to distort timings).
fn random_weights(config: &VaeConfig, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut shapes: Vec<(String, Vec<usize>, usize)> = Vec::new();
    let resnets =
        |shapes: &mut Vec<(String, Vec<usize>, usize)>, stage: &str, n: usize, c: usize| {
            for i in 0..n {
                let p = format!("{stage}.resnets.{i}");
                for norm in ["norm1", "norm2"] {
                    shapes.push((format!("{p}.{norm}.norm_layer.weight"), vec![c], 1));
                    shapes.push((format!("{p}.{norm}.norm_layer.bias"), vec![c], 100));
                }
                for conv in ["conv1", "conv2"] {
                    shapes.push((
                        format!("{p}.{conv}.conv.weight"),
                        vec![c, c, 3, 3, 3],
                        c * 27,
                    ));
                    shapes.push((format!("{p}.{conv}.conv.bias"), vec![c], 100));
                }
            }
        };
    let ch = &config.block_out_channels;
    let n_up = ch.len() - 1;
    let top = ch[n_up];
    let latent = config.latent_channels;
    shapes.push(("conv_in.weight".into(), vec![top, latent, 1, 1, 1], latent));
    shapes.push(("conv_in.bias".into(), vec![top], 100));
    resnets(
        &mut shapes,
        "block_in",
        config.layers_per_block[n_up + 1],
        top,
    );
    for i in 0..n_up {
        let (c_in, c_out) = (ch[n_up - i], ch[n_up - i - 1]);
        let st = config.temporal_expansions[n_up - i - 1];
        let stage = format!("up_blocks.{i}");
        resnets(&mut shapes, &stage, config.layers_per_block[n_up - i], c_in);
        let rows = c_out * st * 4;
        shapes.push((format!("{stage}.proj.weight"), vec![rows, c_in], c_in));
        shapes.push((format!("{stage}.proj.bias"), vec![rows], 100));
    }
    resnets(&mut shapes, "block_out", config.layers_per_block[0], ch[0]);
    shapes.push((
        "proj_out.weight".into(),
        vec![config.out_channels, ch[0]],
        ch[0],
    ));
    shapes.push(("proj_out.bias".into(), vec![config.out_channels], 100));
    let mut out = HashMap::new();
    for (name, shape, fan_in) in shapes {
        let std = (1.0 / (fan_in as f64).sqrt()) as f32;
        let mut t = Tensor::randn(0f32, std, shape, device)?;
        if name.ends_with("norm_layer.weight") {
            t = (t * 0.1)?.affine(1.0, 1.0)?;
        }
        out.insert(format!("decoder.{name}"), t);
    }
    Ok(out)
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One measurement in this (fresh) process; prints a `POINT` line for the parent.
fn run_point(options: &Options, mode: &str, frames: usize) -> Result<()> {
    let device = Device::Cpu;
    let config = config(options);
    let file = std::env::temp_dir().join(format!("vae_bench_{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&random_weights(&config, &device)?, &file)?;
    let decoder = {
        let weights = VaeWeights::from_files(std::slice::from_ref(&file), DType::F32, &device)?;
        VaeDecoder::load(&weights, &config)?
    };
    let _ = std::fs::remove_file(&file);
    let (h, w) = options.latent;
    let z = Tensor::randn(
        0f32,
        1.0,
        (1, config.latent_channels, frames, h, w),
        &device,
    )?;
    let tiles = TileConfig::square(options.tile, options.stride);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let base = status_kib("VmRSS:");
    let start = Instant::now();
    let out = match mode {
        "whole" => decoder.decode(&z)?,
        "stream" => decoder.decode_chunked(&z, options.chunk)?,
        "tiled" => decoder.decode_tiled(&z, &tiles, options.chunk)?,
        "tiled-t" => {
            let mut stream = decoder.stream_tiled(&tiles, h, w)?;
            let chunk = options.chunk.max(1);
            let mut parts = Vec::new();
            let mut start = 0;
            while start < frames {
                let len = chunk.min(frames - start);
                parts.push(stream.push(&z.narrow(2, start, len)?)?);
                start += len;
            }
            Tensor::cat(&parts, 2)?
        }
        other => candle_core::bail!("unknown mode {other}"),
    };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let peak = status_kib("VmHWM:");
    let out_kib = out.elem_count() * 4 / 1024;
    println!(
        "POINT {mode} {frames} {} {ms:.0} {base} {peak} {out_kib} {}",
        out.dim(2)?,
        if reset { "reset" } else { "no-reset" }
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, point) = parse(&args);
    if let Some((mode, frames)) = point {
        return run_point(&options, &mode, frames);
    }
    let exe = std::env::current_exe()?;
    let (h, w) = options.latent;
    println!(
        "decoder channels {:?} (res blocks {:?}), latent {h}x{w} → {}x{} px, chunk {} latent frame(s), tiles {} every {} latents, threads {}",
        options.channels,
        VaeConfig::mochi_1_preview().layers_per_block,
        h * 8,
        w * 8,
        options.chunk,
        options.tile,
        options.stride,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
    );
    println!("| mode | latent T | frames | time | base RSS | peak RSS | peak − base | output |");
    println!("|---|---|---|---|---|---|---|---|");
    for mode in &options.modes {
        for &frames in &options.frames {
            let output = Command::new(&exe)
                .args(&args)
                .args(["--point", mode, &frames.to_string()])
                .output()?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let Some(line) = stdout.lines().find(|l| l.starts_with("POINT ")) else {
                eprintln!(
                    "{mode} T={frames} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                continue;
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            let mib = |s: &str| s.parse::<f64>().unwrap_or(0.0) / 1024.0;
            let (base, peak) = (mib(f[5]), mib(f[6]));
            println!(
                "| {mode} | {frames} | {} | {} ms | {base:.0} MiB | {peak:.0} MiB | {:.0} MiB | {:.1} MiB |{}",
                f[3],
                f[4],
                peak - base,
                mib(f[7]),
                if f[8] == "reset" {
                    ""
                } else {
                    " (VmHWM not reset)"
                }
            );
        }
    }
    Ok(())
}
