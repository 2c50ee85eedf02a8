use super::*;

fn shape(frames: u32, width: u32, height: u32, steps: u32) -> JobShape {
    JobShape::new(frames, 30, width, height, steps, true)
}

fn within(value: f64, target: f64, tolerance: f64) -> bool {
    (value / target - 1.0).abs() <= tolerance
}

#[test]
fn priors_match_the_published_timings_they_were_fitted_to() {
    // xDiT: 49 frames at 848×480, 64 steps, one L40: 394 s.
    let l40 = prior(&shape(49, 848, 480, 64), GpuClass::L40).gpu_seconds;
    assert!(within(l40, 394.0, 0.15), "L40 predicted {l40:.0} s");
    // About 20 minutes for a 5 s 480p clip on one A100-80GB.
    let a100 = prior(&shape(163, 848, 480, 64), GpuClass::A100).gpu_seconds;
    assert!(within(a100, 1200.0, 0.15), "A100 predicted {a100:.0} s");
    // The spec's own estimate for the reference job on one H100: 6–12 minutes.
    let h100 = prior(&shape(163, 848, 480, 64), GpuClass::H100).gpu_seconds;
    assert!(
        (360.0..=720.0).contains(&h100),
        "H100 predicted {h100:.0} s"
    );
}

#[test]
fn cost_grows_with_tokens_quadratically_and_with_steps_linearly() {
    let short = prior(&shape(31, 848, 480, 64), GpuClass::H100);
    let long = prior(&shape(301, 848, 480, 64), GpuClass::H100);
    let ratio = long.denoise_seconds / short.denoise_seconds;
    let token_ratio = 51.0 / 6.0;
    assert!(
        ratio > token_ratio * 1.5,
        "attention makes long videos superlinear: {ratio:.1}"
    );
    let half = prior(&shape(31, 848, 480, 32), GpuClass::H100);
    assert!(within(
        half.denoise_seconds * 2.0,
        short.denoise_seconds,
        1e-9
    ));
    let no_cfg = prior(&JobShape::new(31, 30, 848, 480, 64, false), GpuClass::H100);
    assert!(within(
        no_cfg.denoise_seconds * 2.0,
        short.denoise_seconds,
        1e-9
    ));
}

#[test]
fn memory_separates_the_classes() {
    // 480p fits every GPU class, 720p needs an 80 GB card, 1080p only the H200.
    let p480 = gpu_peak_bytes(&shape(163, 848, 480, 64));
    let p720 = gpu_peak_bytes(&shape(61, 1280, 720, 64));
    let p1080 = gpu_peak_bytes(&shape(121, 1920, 1088, 64));
    let l40 = GpuClass::L40.spec().memory_bytes;
    let h100 = GpuClass::H100.spec().memory_bytes;
    let h200 = GpuClass::H200.spec().memory_bytes;
    assert!(p480 <= l40, "480p needs {}", gb(p480));
    assert!(p720 > l40 && p720 <= h100, "720p needs {}", gb(p720));
    assert!(p1080 > h100 && p1080 <= h200, "1080p needs {}", gb(p1080));
    assert!(p480 as f64 > 30.2e9, "resident weights included");
    // The tiny model on a CPU needs little.
    assert!(prior(&shape(13, 256, 144, 4), GpuClass::Cpu).peak_bytes < 1 << 30);
}

#[test]
fn class_names_parse_and_unknown_names_fall_back() {
    for class in GpuClass::ALL {
        assert_eq!(GpuClass::parse(class.name()), Some(class));
    }
    assert_eq!(GpuClass::parse("H100"), Some(GpuClass::H100));
    assert_eq!(GpuClass::parse("tpu"), None);
    assert_eq!(GpuClass::parse_or_default("tpu"), GpuClass::A100);
}

#[test]
fn corrections_converge_on_the_observed_ratio_per_bucket() {
    let mut model = CostModel::default();
    let job = shape(31, 848, 480, 64);
    let other = shape(301, 1280, 720, 64);
    let prior_s = prior(&job, GpuClass::H100).gpu_seconds;
    let first_error = model.observe(&job, GpuClass::H100, prior_s * 1.5);
    assert!(within(first_error, 0.5, 1e-9));
    for _ in 0..30 {
        model.observe(&job, GpuClass::H100, prior_s * 1.5);
    }
    let corrected = model.estimate(&job, GpuClass::H100).gpu_seconds;
    assert!(
        within(corrected, prior_s * 1.5, 0.01),
        "{corrected} vs {prior_s}"
    );
    // Other buckets and classes keep their priors.
    assert_eq!(
        model.estimate(&other, GpuClass::H100),
        prior(&other, GpuClass::H100)
    );
    assert_eq!(
        model.estimate(&job, GpuClass::L40),
        prior(&job, GpuClass::L40)
    );
    // Nonsense observations are ignored; extreme ones are clamped.
    let before = model.corrections.clone();
    model.observe(&job, GpuClass::H100, f64::NAN);
    model.observe(&job, GpuClass::H100, -1.0);
    assert_eq!(model.corrections, before);
    let mut fresh = CostModel::default();
    fresh.observe(&job, GpuClass::H100, prior_s * 1e6);
    assert!(fresh.estimate(&job, GpuClass::H100).gpu_seconds <= prior_s * 8.0 + 1e-6);
}

#[test]
fn corrections_round_trip_as_json() {
    let mut model = CostModel::default();
    model.observe(&shape(31, 848, 480, 64), GpuClass::L40, 100.0);
    let json = serde_json::to_vec(&model.corrections).expect("serialise");
    let back: Corrections = serde_json::from_slice(&json).expect("parse");
    // serde_json may round the last bit of a float; nothing more.
    assert_eq!(back.buckets.len(), 1);
    for (key, bucket) in &model.corrections.buckets {
        let read = back.buckets[key];
        assert_eq!(read.count, bucket.count);
        assert!((read.log_ratio - bucket.log_ratio).abs() < 1e-12);
    }
}

#[test]
fn admission_refuses_what_no_slot_holds_and_says_what_would_fit() {
    let fleet = [(GpuClass::H100, GpuClass::H100.spec().memory_bytes); 2];
    assert!(admit(&shape(163, 1280, 720, 64), fleet).is_ok());
    assert!(
        admit(&shape(301, 1920, 1088, 64), []).is_ok(),
        "no slot known: wait"
    );
    let refusal = admit(&shape(301, 1920, 1088, 64), fleet).expect_err("too big");
    assert_eq!(refusal.largest_class, GpuClass::H100.name());
    assert!(refusal.needs_bytes > refusal.largest_bytes);
    let (width, height) = refusal.max_resolution.expect("a smaller resolution fits");
    assert!(width < 1920 && height < 1088);
    assert!(gpu_peak_bytes(&shape(301, width, height, 64)) <= refusal.largest_bytes);
    let message = refusal.message();
    println!("{message}");
    assert!(
        message.contains("h100-80gb") && message.contains("GB"),
        "{message}"
    );
    assert!(message.contains(&format!("{width}x{height}")), "{message}");
    if let Some(frames) = refusal.max_frames {
        assert!(gpu_peak_bytes(&shape(frames, 1920, 1088, 64)) <= refusal.largest_bytes);
        assert!(gpu_peak_bytes(&shape(frames + 6, 1920, 1088, 64)) > refusal.largest_bytes);
    }
}
