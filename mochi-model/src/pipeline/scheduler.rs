//! Mochi's linear-quadratic sigma schedule (`docs/mochi-model-spec.md` §1.4), as genmo's
//! `linear_quadratic_schedule` (genmoai/mochi@0c86aebf `pipelines.py`) computes it in f64.

/// Default `threshold_noise` (τ).
pub const DEFAULT_THRESHOLD_NOISE: f64 = 0.025;

/// Sigmas for `num_steps` steps: `num_steps + 1` values from 1.0 down to 0.0.
///
/// The first `linear_steps` (default `num_steps / 2`) progress values grow linearly to
/// just below τ, the rest quadratically to 1; σ = 1 − progress, with a final σ = 0.
pub fn linear_quadratic(
    num_steps: usize,
    threshold_noise: f64,
    linear_steps: Option<usize>,
) -> Vec<f64> {
    if num_steps == 0 {
        return vec![0.0];
    }
    let linear = linear_steps.unwrap_or(num_steps / 2).clamp(1, num_steps);
    let n = num_steps as f64;
    let m = linear as f64;
    let mut progress: Vec<f64> = (0..linear)
        .map(|i| i as f64 * threshold_noise / m)
        .collect();
    let quadratic_steps = n - m;
    if num_steps > linear {
        let step_diff = m - threshold_noise * n;
        let quadratic_coef = step_diff / (m * quadratic_steps.powi(2));
        let linear_coef = threshold_noise / m - 2.0 * step_diff / quadratic_steps.powi(2);
        let constant = quadratic_coef * m.powi(2);
        progress.extend((linear..num_steps).map(|i| {
            let i = i as f64;
            quadratic_coef * i.powi(2) + linear_coef * i + constant
        }));
    }
    progress.push(1.0);
    progress.into_iter().map(|u| 1.0 - u).collect()
}

/// The DiT's timestep input for a sigma: `1000·(1−σ)`.
pub fn timestep_from_sigma(sigma: f64) -> f64 {
    1000.0 * (1.0 - sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn sixty_four_steps_match_reference_values() {
        let s = linear_quadratic(64, DEFAULT_THRESHOLD_NOISE, None);
        assert_eq!(s.len(), 65);
        let expected = [
            (0, 1.0),
            (1, 0.999219),
            (2, 0.998437),
            (3, 0.997656),
            (32, 0.975),
            (33, 0.973291),
            (61, 0.172119),
            (62, 0.116602),
            (63, 0.059229),
            (64, 0.0),
        ];
        for (i, value) in expected {
            assert!(
                close(s[i], value, 1e-6),
                "sigma[{i}] = {} expected {value}",
                s[i]
            );
        }
    }

    #[test]
    fn fast_mode_schedule_matches_genmo_comment() {
        let s = linear_quadratic(8, 0.1, Some(6));
        let expected = [1.0, 0.9833, 0.9667, 0.95, 0.9333, 0.9167, 0.9, 0.6667, 0.0];
        assert_eq!(s.len(), expected.len());
        for (got, want) in s.iter().zip(expected) {
            assert!(close(*got, want, 1e-4), "{got} vs {want}");
        }
    }

    #[test]
    fn sigmas_strictly_decrease() {
        for n in [1, 2, 3, 8, 50, 64, 100] {
            let s = linear_quadratic(n, DEFAULT_THRESHOLD_NOISE, None);
            assert!(s.windows(2).all(|w| w[0] > w[1]), "n={n}: {s:?}");
        }
    }

    #[test]
    fn timestep_is_scaled_progress() {
        assert_eq!(timestep_from_sigma(1.0), 0.0);
        assert!(close(timestep_from_sigma(0.5625), 437.5, 1e-9));
    }
}
