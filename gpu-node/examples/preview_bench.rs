//! Time of the JPEG previews (thumbnail + spritesheet) against the MP4 encode of the same
//! frames, on the slot thread's path (`mp4::encode`, then `preview::render`).
//!
//! `cargo run --release -p gpu-node --example preview_bench -- [WIDTH HEIGHT FRAMES REPS]`
//! [848 480 163 5]. Frames are the simulated backend's test pattern. Prints the median of
//! `REPS` runs of each. `PREVIEW_BENCH_OUT=/tmp/preview` also writes
//! `/tmp/preview-thumbnail.jpg` and `/tmp/preview-spritesheet.jpg`.

use std::time::{Duration, Instant};

use gpu_node::backend::pattern;
use gpu_node::config::VideoConfig;
use gpu_node::{mp4, preview};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse())
        .collect::<Result<_, _>>()?;
    let arg = |index: usize, default: u32| args.get(index).copied().unwrap_or(default);
    let (width, height, num_frames, reps) = (arg(0, 848), arg(1, 480), arg(2, 163), arg(3, 5));
    let video = pattern::render("preview-bench", width, height, num_frames, 30);
    let settings = VideoConfig::default();

    let (mp4_time, mp4_bytes) = median(reps, || mp4::encode(&video, &settings))?;
    let (thumbnail_time, thumbnail) = median(reps, || preview::thumbnail(&video))?;
    let (spritesheet_time, spritesheet) = median(reps, || preview::spritesheet(&video))?;
    let previews_time = thumbnail_time + spritesheet_time;

    println!("{width}x{height}, {num_frames} frames, median of {reps}:");
    println!(
        "  mp4::encode          {:>9.1} ms  {:>9} bytes",
        ms(mp4_time),
        mp4_bytes.len()
    );
    println!(
        "  preview::thumbnail   {:>9.1} ms  {:>9} bytes",
        ms(thumbnail_time),
        thumbnail.len()
    );
    println!(
        "  preview::spritesheet {:>9.1} ms  {:>9} bytes",
        ms(spritesheet_time),
        spritesheet.len()
    );
    println!(
        "  previews / mp4: {:.3} ({:.1} ms / {:.1} ms)",
        previews_time.as_secs_f64() / mp4_time.as_secs_f64(),
        ms(previews_time),
        ms(mp4_time)
    );
    if let Ok(prefix) = std::env::var("PREVIEW_BENCH_OUT") {
        std::fs::write(format!("{prefix}-thumbnail.jpg"), &thumbnail)?;
        std::fs::write(format!("{prefix}-spritesheet.jpg"), &spritesheet)?;
    }
    Ok(())
}

/// Runs `work` `reps` times (at least once); the median time and the last output.
fn median<T, E>(reps: u32, mut work: impl FnMut() -> Result<T, E>) -> Result<(Duration, T), E> {
    let mut times = Vec::new();
    let mut output = None;
    for _ in 0..reps.max(1) {
        let started = Instant::now();
        output = Some(work()?);
        times.push(started.elapsed());
    }
    times.sort();
    let output = output.expect("at least one run");
    Ok((times[times.len() / 2], output))
}

fn ms(time: Duration) -> f64 {
    time.as_secs_f64() * 1000.0
}
