//! Golden tests of the VAE decoder against diffusers' `AutoencoderKLMochi` (tiny config).
//!
//! Fixtures come from `tools/make_vae_fixtures.py` (spec §6.2): genmo frame-dropping
//! semantics (the reference behaviour, built from diffusers' sub-modules with `st − 1`
//! frames dropped after every up block), plus diffusers' own `vae.decode`. Everything
//! compares in f32 with max |Δ| ≤ 1e-4, including the spatially tiled decode against
//! diffusers' own `tiled_decode` (same blend rule). No Python is needed here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mochi_model::model::vae::conv3d::{CausalConv3d, Conv3dStrategy};
use mochi_model::model::vae::tiling::TileConfig;
use mochi_model::model::vae::weights::{VaeScheme, VaeWeights};
use mochi_model::model::vae::{FrameDrop, VaeConfig, VaeDecoder};
use mochi_model::pipeline::sampling::vae_to_dit;
use mochi_model::pipeline::vae::{decode_latents, to_rgb_frames};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).expect("fixture loads")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .expect("abs")
        .max_all()
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// (max |Δ|, max |Δ| / max |reference|).
fn errors(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let got = got.to_dtype(DType::F32).expect("f32");
    let want = want.to_dtype(DType::F32).expect("f32");
    let diff = max_abs(&(&got - &want).expect("sub"));
    (diff, diff / max_abs(&want).max(1e-12))
}

fn check(label: &str, got: &Tensor, want: &Tensor) {
    let (abs, rel) = errors(got, want);
    println!("{label:<32} max|Δ| {abs:.3e}  rel {rel:.3e}");
    assert!(
        abs <= TOLERANCE,
        "{label}: max |Δ| {abs} > {TOLERANCE} (rel {rel})"
    );
}

fn decoder() -> VaeDecoder {
    VaeDecoder::from_model_dir(&fixtures().join("model"), DType::F32, &Device::Cpu)
        .expect("decoder loads")
}

fn check_case(decoder: &VaeDecoder, case: &str) {
    let data = load(&format!("case_{case}.safetensors"));
    let (out, taps) = decoder
        .decode_with_taps(&data["in_latents"], true)
        .expect("decode");
    let mut compared = 0;
    for (name, got) in &taps {
        if let Some(want) = data.get(&format!("tap_{name}")) {
            check(&format!("{case} {name}"), got, want);
            compared += 1;
        }
    }
    assert!(compared >= 4, "{case}: only {compared} taps compared");
    check(&format!("{case} output (genmo)"), &out, &data["out_genmo"]);
}

#[test]
fn structure_is_read_from_weights() {
    let w = VaeWeights::from_model_dir(&fixtures().join("model"), DType::F32, &Device::Cpu)
        .expect("weights");
    assert_eq!(
        w.scheme(),
        &VaeScheme::Diffusers {
            prefix: "decoder.".into()
        }
    );
    assert_eq!(
        VaeConfig::from_weights(&w).expect("config"),
        VaeConfig::tiny()
    );
    assert_eq!(VaeConfig::mochi_1_preview().output_frames(28), 163);
    assert_eq!(VaeConfig::tiny().output_frames(1), 1);
}

#[test]
fn decode_t1_matches_reference() {
    check_case(&decoder(), "t1");
}

#[test]
fn decode_t2_matches_reference() {
    check_case(&decoder(), "t2");
}

#[test]
fn decode_t3_matches_reference() {
    check_case(&decoder(), "t3");
}

#[test]
fn im2col_strategy_matches_reference() {
    let dec = decoder().with_strategy(Conv3dStrategy::Im2col);
    let data = load("case_t3.safetensors");
    let out = dec.decode(&data["in_latents"]).expect("decode");
    check("t3 output (im2col)", &out, &data["out_genmo"]);
}

#[test]
fn diffusers_frame_drop_matches_vae_decode() {
    let dec = decoder().with_frame_drop(FrameDrop::Diffusers);
    for case in ["t1", "t2", "t3"] {
        let data = load(&format!("case_{case}.safetensors"));
        let out = dec.decode(&data["in_latents"]).expect("decode");
        check(
            &format!("{case} output (diffusers)"),
            &out,
            &data["out_diffusers"],
        );
    }
    // The two semantics really differ (beyond T = 1), so each test pins its own.
    let data = load("case_t3.safetensors");
    let (gap, _) = errors(&data["out_genmo"], &data["out_diffusers"]);
    assert!(gap > 1e-2, "genmo and diffusers outputs coincide ({gap})");
}

#[test]
fn genmo_checkpoint_loads_to_the_same_decoder() {
    let dir = fixtures().join("genmo");
    let w = VaeWeights::from_model_dir(&dir, DType::F32, &Device::Cpu).expect("weights");
    assert_eq!(w.scheme(), &VaeScheme::Genmo { prefix: "".into() });
    let dec = VaeDecoder::from_model_dir(&dir, DType::F32, &Device::Cpu).expect("decoder");
    assert_eq!(dec.config(), &VaeConfig::tiny());
    let data = load("case_t2.safetensors");
    let out = dec.decode(&data["in_latents"]).expect("decode");
    check("t2 output (genmo weights)", &out, &data["out_genmo"]);
}

#[test]
fn causal_conv_matches_reference() {
    let data = load("conv3d.safetensors");
    let conv = CausalConv3d::new(data["weight"].clone(), data["bias"].clone()).expect("conv");
    // (1, C, T, H, W) → (T, C, H, W).
    let x = data["x"]
        .get(0)
        .and_then(|x| x.permute((1, 0, 2, 3)))
        .and_then(|x| x.contiguous())
        .expect("x");
    for strategy in [Conv3dStrategy::TapConv2d, Conv3dStrategy::Im2col] {
        let (y, _) = conv.forward(&x, None, strategy).expect("conv");
        let y = y
            .permute((1, 0, 2, 3))
            .and_then(|y| y.unsqueeze(0))
            .expect("y");
        check(&format!("conv3d {strategy:?}"), &y, &data["y"]);
    }
}

#[test]
fn streaming_equals_whole_decode() {
    let dec = decoder();
    let data = load("case_t3.safetensors");
    let whole = dec.decode(&data["in_latents"]).expect("whole");
    for chunk in [1, 2] {
        let streamed = dec
            .decode_chunked(&data["in_latents"], chunk)
            .expect("stream");
        let (abs, _) = errors(&streamed, &whole);
        println!("streaming chunk {chunk}: max|Δ| vs whole {abs:.3e}");
        assert_eq!(abs, 0.0, "chunk {chunk}: streamed differs by {abs}");
    }
    let diffusers = decoder().with_frame_drop(FrameDrop::Diffusers);
    let whole = diffusers.decode(&data["in_latents"]).expect("whole");
    let streamed = diffusers
        .decode_chunked(&data["in_latents"], 1)
        .expect("stream");
    let (abs, _) = errors(&streamed, &whole);
    assert_eq!(abs, 0.0, "diffusers semantics: streamed differs by {abs}");
}

#[test]
fn short_clips_stream_to_the_reference() {
    // T = 1 and T = 2 edge cases through the streaming path (one latent frame per chunk),
    // against the references directly, in both frame-dropping semantics.
    for (drop, key) in [
        (FrameDrop::Genmo, "out_genmo"),
        (FrameDrop::Diffusers, "out_diffusers"),
    ] {
        let dec = decoder().with_frame_drop(drop);
        for case in ["t1", "t2"] {
            let data = load(&format!("case_{case}.safetensors"));
            let streamed = dec.decode_chunked(&data["in_latents"], 1).expect("stream");
            check(
                &format!("{case} streamed ({drop:?})"),
                &streamed,
                &data[key],
            );
        }
    }
}

/// The tile grid of `case_tiled` from the diffusers pixel sizes stored with it.
fn fixture_tiles(data: &HashMap<String, Tensor>) -> TileConfig {
    // Sorted keys: min height, min width, stride height, stride width (pixels).
    let px = data["tiles"].to_vec1::<i64>().expect("tiles");
    let latent = |i: usize| usize::try_from(px[i] / 8).expect("size");
    TileConfig {
        tile_height: latent(0),
        tile_width: latent(1),
        stride_height: latent(2),
        stride_width: latent(3),
    }
}

#[test]
fn tiled_decode_matches_diffusers_tiled_decode() {
    let dec = decoder().with_frame_drop(FrameDrop::Diffusers);
    let data = load("case_tiled.safetensors");
    let tiles = fixture_tiles(&data);
    assert_eq!(
        (
            tiles.tile_height,
            tiles.tile_width,
            tiles.stride_height,
            tiles.stride_width
        ),
        (4, 6, 3, 4)
    );
    let z = &data["in_latents"];
    let (rows, cols) = tiles.grid(z.dim(3).expect("h"), z.dim(4).expect("w"));
    assert_eq!(
        (rows.len(), cols.len()),
        (2, 3),
        "fixture exercises a 2x3 grid"
    );
    let want = &data["out_tiled_diffusers"];
    let tiled = dec.decode_tiled(z, &tiles, 0).expect("tiled");
    check("tiled (diffusers rule)", &tiled, want);
    let streamed = dec.decode_tiled(z, &tiles, 1).expect("tiled + streamed");
    check("tiled + streaming", &streamed, want);
    let (gap, _) = errors(&streamed, &tiled);
    assert_eq!(
        gap, 0.0,
        "streaming inside tiles changed the result by {gap}"
    );
    // Tiling is an approximation: here it is far from the whole decode, so the golden
    // pins the blend rule and not just the decoder.
    let whole = dec.decode(z).expect("whole");
    let (approx, _) = errors(&tiled, &whole);
    println!("tiled vs whole decode (tiling approximation): max|Δ| {approx:.3e}");
    assert!(approx > 1e-2, "tiled equals whole ({approx})");
}

#[test]
fn time_major_tiled_stream_equals_tiled_decode() {
    // Genmo semantics (the serving default): all tiles advance one latent frame per push.
    let dec = decoder();
    let data = load("case_tiled.safetensors");
    let z = &data["in_latents"];
    let tiles = fixture_tiles(&data);
    let tiled = dec.decode_tiled(z, &tiles, 0).expect("tiled");
    assert_eq!(tiled.dims(), &[1, 3, 7, 40, 72]);
    let (t, h, w) = (
        z.dim(2).expect("t"),
        z.dim(3).expect("h"),
        z.dim(4).expect("w"),
    );
    let mut stream = dec.stream_tiled(&tiles, h, w).expect("tiled stream");
    let pushed: Vec<Tensor> = (0..t)
        .map(|i| {
            stream
                .push(&z.narrow(2, i, 1).expect("chunk"))
                .expect("push")
        })
        .collect();
    assert_eq!(pushed[0].dim(2).expect("frames"), 1);
    let pushed = Tensor::cat(&pushed, 2).expect("cat");
    let (gap, _) = errors(&pushed, &tiled);
    assert_eq!(gap, 0.0, "time-major tiled stream differs by {gap}");
    let err = stream
        .push(&z.narrow(3, 0, 2).expect("narrow"))
        .expect_err("wrong size");
    assert!(err.to_string().contains("tiled stream"), "{err}");
}

#[test]
fn one_tile_covering_the_frame_equals_whole_decode() {
    let data = load("case_tiled.safetensors");
    // A 3x4-latent corner keeps this test quick.
    let z = data["in_latents"]
        .narrow(3, 0, 3)
        .and_then(|z| z.narrow(4, 0, 4))
        .expect("corner");
    for drop in [FrameDrop::Genmo, FrameDrop::Diffusers] {
        let dec = decoder().with_frame_drop(drop);
        let whole = dec.decode(&z).expect("whole");
        // Exactly the frame, and bigger than it; strides smaller than the tile.
        for tiles in [
            TileConfig {
                tile_height: 3,
                tile_width: 4,
                stride_height: 2,
                stride_width: 3,
            },
            TileConfig::diffusers_default(),
        ] {
            for chunk in [0, 1] {
                let tiled = dec.decode_tiled(&z, &tiles, chunk).expect("tiled");
                let (abs, _) = errors(&tiled, &whole);
                assert_eq!(
                    abs, 0.0,
                    "{drop:?} {tiles:?} chunk {chunk}: differs by {abs}"
                );
            }
        }
    }
}

#[test]
fn wrong_shapes_and_missing_tensors_are_named() {
    let dir = fixtures().join("model");
    let w = VaeWeights::from_model_dir(&dir, DType::F32, &Device::Cpu).expect("weights");
    let mut config = VaeConfig::tiny();
    config.block_out_channels = vec![32, 32, 32, 64];
    let err = VaeDecoder::load(&w, &config)
        .expect_err("shape mismatch")
        .to_string();
    assert!(
        err.contains("conv_in.weight") && err.contains("[32, 12, 1, 1, 1]"),
        "{err}"
    );
    config = VaeConfig::tiny();
    config.layers_per_block = vec![1, 1, 1, 1, 2];
    let err = VaeDecoder::load(&w, &config)
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("block_in.resnets.1.norm1.norm_layer.weight"),
        "{err}"
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let err = VaeDecoder::from_model_dir(empty.path(), DType::F32, &Device::Cpu)
        .expect_err("no weights")
        .to_string();
    assert!(err.contains("decoder.safetensors"), "{err}");
}

#[test]
fn dit_latents_decode_to_rgb_frames() {
    let dec = decoder();
    let data = load("case_t2.safetensors");
    let dit = vae_to_dit(&data["in_latents"]).expect("normalise");
    let rgb = decode_latents(&dec, &dit, 1).expect("decode");
    let reference = to_rgb_frames(&data["out_genmo"]).expect("rgb");
    assert_eq!((rgb.width, rgb.height, rgb.frames.len()), (24, 16, 7));
    let mut off_by_one = 0;
    for (a, b) in rgb
        .frames
        .iter()
        .flatten()
        .zip(reference.frames.iter().flatten())
    {
        let d = (i16::from(*a) - i16::from(*b)).abs();
        assert!(d <= 1, "pixel differs by {d}");
        off_by_one += usize::from(d == 1);
    }
    // Truncation can flip a value sitting on a boundary; nearly all must be identical.
    assert!(off_by_one * 100 < rgb.frames.len() * rgb.frames[0].len());
}

/// Conv3d strategy timings on realistic channel counts (no assertions on time).
/// `cargo test -p mochi-model --test model_vae conv3d_strategy_bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run explicitly"]
fn conv3d_strategy_bench() {
    let dev = Device::Cpu;
    let reps = 3;
    for (c, t, h, w) in [
        (128, 4, 32, 32),
        (256, 4, 32, 32),
        (512, 2, 16, 16),
        (768, 2, 16, 16),
    ] {
        let weight = Tensor::randn(0f32, 0.02, (c, c, 3, 3, 3), &dev).expect("w");
        let bias = Tensor::zeros(c, DType::F32, &dev).expect("b");
        let conv = CausalConv3d::new(weight, bias).expect("conv");
        let x = Tensor::randn(0f32, 1.0, (t, c, h, w), &dev).expect("x");
        let mut line = format!("C={c:<4} T={t} {h}x{w}");
        let mut outs = Vec::new();
        for strategy in [Conv3dStrategy::TapConv2d, Conv3dStrategy::Im2col] {
            let _ = conv.forward(&x, None, strategy).expect("warm-up");
            let mut times = Vec::new();
            let mut out = None;
            for _ in 0..reps {
                let start = std::time::Instant::now();
                out = Some(conv.forward(&x, None, strategy).expect("conv").0);
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            line.push_str(&format!("  {strategy:?} {:.1} ms", times[reps / 2]));
            outs.push(out.expect("ran"));
        }
        let (abs, rel) = errors(&outs[0], &outs[1]);
        println!("{line}  (strategies differ by {abs:.1e}, rel {rel:.1e})");
        assert!(rel < 1e-4);
    }
}

/// Tiny-decoder timings, whole vs streaming, for `docs/benchmarks.md`.
/// `cargo test -p mochi-model --test model_vae tiny_decode_bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run explicitly"]
fn tiny_decode_bench() {
    let dec = decoder();
    for t in [4, 8, 16] {
        let z = Tensor::randn(0f32, 1.0, (1, 12, t, 8, 8), &Device::Cpu).expect("z");
        let mut row = format!(
            "T={t:<3} -> {} frames 64x64",
            VaeConfig::tiny().output_frames(t)
        );
        for (label, chunk) in [("whole", 0), ("stream1", 1), ("stream4", 4)] {
            let start = std::time::Instant::now();
            let out = if chunk == 0 {
                dec.decode(&z)
            } else {
                dec.decode_chunked(&z, chunk)
            }
            .expect("decode");
            row.push_str(&format!(
                "  {label} {:.0} ms",
                start.elapsed().as_secs_f64() * 1e3
            ));
            assert_eq!(out.dim(2).expect("frames"), 6 * t - 5);
        }
        println!("{row}");
    }
}

/// Writes the `vae/` files of a decoder of `config` under a new directory; without
/// `with_config`, the weights alone (as genmo ships them, with no `config.json`).
fn checkpoint(config: &VaeConfig, with_config: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, bytes) in mochi_model::model_dir::tiny::vae_files(config).expect("files") {
        if path.ends_with("config.json") && !with_config {
            continue;
        }
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, bytes).expect("write");
    }
    dir
}

/// Temporal 4 × spatial 1 in the middle up block: its projection has the rows of temporal 1
/// × spatial 2, so the shapes alone cannot tell them apart.
fn ambiguous() -> VaeConfig {
    VaeConfig {
        temporal_expansions: vec![1, 4, 3],
        spatial_expansions: vec![2, 1, 2],
        ..VaeConfig::tiny()
    }
}

#[test]
fn the_structure_comes_from_vae_config_json_where_the_shapes_are_ambiguous() {
    let config = ambiguous();
    let dir = checkpoint(&config, true);
    let decoder = VaeDecoder::from_model_dir(dir.path(), DType::F32, &Device::Cpu)
        .expect("a checkpoint and its config load");
    assert_eq!(decoder.config(), &config);
    let latents = Tensor::zeros((1, 12, 2, 3, 4), DType::F32, &Device::Cpu).expect("latents");
    let frames = decoder.decode(&latents).expect("decode");
    // 2 latent frames × (1·4·3) − 11, and 3 × 4 latent pixels × (2·1·2).
    assert_eq!(frames.dims(), &[1, 3, 13, 12, 16]);

    // The same weights without their config: the shapes read as temporal 1, spatial 2.
    let bare = checkpoint(&config, false);
    let guessed = VaeDecoder::from_model_dir(bare.path(), DType::F32, &Device::Cpu)
        .expect("the weights alone load");
    assert_eq!(guessed.config().temporal_expansions, vec![1, 1, 3]);
    assert_eq!(guessed.config().spatial_expansions, vec![2, 2, 2]);
    let frames = guessed.decode(&latents).expect("decode");
    assert_eq!(
        frames.dims(),
        &[1, 3, 4, 24, 32],
        "a different video: hence the config"
    );
}

#[test]
fn a_config_the_weights_contradict_is_refused_naming_the_field_and_both_values() {
    let dir = checkpoint(&VaeConfig::tiny(), true);
    let config = dir.path().join("vae/config.json");
    let cases = [
        (
            VaeConfig {
                layers_per_block: vec![1, 1, 2, 1, 1],
                ..VaeConfig::tiny()
            },
            "layers_per_block is [1, 1, 2, 1, 1] in the config, the weights have [1, 1, 1, 1, 1]",
        ),
        (
            ambiguous(),
            "temporal_expansions[1] × spatial_expansions[1]² is 4 × 1² = 4 in the config, the weights' up block expands by 8",
        ),
        (
            VaeConfig {
                block_out_channels: vec![32, 32, 32, 64],
                ..VaeConfig::tiny()
            },
            "decoder_block_out_channels is [32, 32, 32, 64] in the config, the weights have [32, 32, 32, 32]",
        ),
    ];
    for (wrong, expected) in cases {
        let (_, text) = mochi_model::model_dir::tiny::vae_files(&wrong)
            .expect("files")
            .into_iter()
            .find(|(path, _)| path.ends_with("config.json"))
            .expect("config");
        std::fs::write(&config, text).expect("write");
        let error = VaeDecoder::from_model_dir(dir.path(), DType::F32, &Device::Cpu)
            .expect_err("contradicted")
            .to_string();
        assert!(error.contains(expected), "{error}");
        assert!(
            error.contains("vae/config.json contradicts the weights"),
            "{error}"
        );
    }
}

#[test]
fn bf16_weights_stay_within_the_measured_budget() {
    let decoder = VaeDecoder::from_model_dir(&fixtures().join("model"), DType::BF16, &Device::Cpu)
        .expect("bf16 decoder loads");
    for strategy in [Conv3dStrategy::TapConv2d, Conv3dStrategy::Im2col] {
        let decoder = decoder.clone().with_strategy(strategy);
        for case in ["t1", "t2", "t3"] {
            let data = load(&format!("case_{case}.safetensors"));
            let out = decoder.decode(&data["in_latents"]).expect("bf16 decode");
            let (abs, rel) = errors(&out, &data["out_genmo"]);
            println!("bf16 {strategy:?} {case} output max|Δ| {abs:.3e}  rel {rel:.3e}");
            // docs/model.md: measured 1.0e-2 – 1.3e-2; the budget leaves room for rounding
            // differences between builds, not for a wrong conv or norm dtype.
            assert!(rel < 0.03, "bf16 {case}: relative error {rel} over budget");
            assert!(abs > 0.0, "a bf16 decode should differ from f32");
        }
    }
}
