//! Online correction of the cost model: per shape bucket (GPU class, visual tokens in
//! half-octaves, CFG), an exponentially weighted mean of `log(observed / prior)`.

use std::collections::BTreeMap;

use protocol::JobShape;
use serde::{Deserialize, Serialize};

use protocol::cost::GpuClass;

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;
/// Corrections are clamped to this factor either way (a broken node must not teach the
/// model that every job takes an hour).
const MAX_FACTOR: f64 = 8.0;

/// The learned state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Weighted mean of `ln(observed / prior)`.
    pub log_ratio: f64,
    /// Observations taken in.
    pub count: u64,
}

/// Corrections by bucket key (`<class>/t<half-octave>/<cfg|nocfg>`); serialised as JSON in
/// the `mochi_cost` bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Corrections {
    /// The buckets.
    pub buckets: BTreeMap<String, Bucket>,
}

/// The bucket key of a shape on a class.
pub fn bucket_key(class: GpuClass, shape: &JobShape) -> String {
    let cfg = if shape.cfg { "cfg" } else { "nocfg" };
    format!("{}/t{}/{cfg}", class.name(), shape.token_bucket())
}

impl Corrections {
    /// The factor to multiply the prior's seconds by (1 when the bucket is empty).
    pub fn factor(&self, class: GpuClass, shape: &JobShape) -> f64 {
        self.buckets
            .get(&bucket_key(class, shape))
            .map_or(1.0, |bucket| bucket.log_ratio.exp())
    }

    /// Takes in one observation of `observed / prior`.
    pub fn observe(&mut self, class: GpuClass, shape: &JobShape, ratio: f64) {
        if !ratio.is_finite() || ratio <= 0.0 {
            return;
        }
        let log = ratio.ln().clamp(-MAX_FACTOR.ln(), MAX_FACTOR.ln());
        let bucket = self
            .buckets
            .entry(bucket_key(class, shape))
            .or_insert(Bucket {
                log_ratio: log,
                count: 0,
            });
        // The first observations count fully, then the weight settles at ALPHA.
        let weight = (1.0 / (bucket.count as f64 + 1.0)).max(ALPHA);
        bucket.log_ratio += weight * (log - bucket.log_ratio);
        bucket.count += 1;
    }
}
