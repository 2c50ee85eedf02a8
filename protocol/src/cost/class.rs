//! GPU classes: the devices a slot may run on, each with its memory, dense bf16 peak and
//! the efficiency fitted to published single-GPU timings.

use serde::{Deserialize, Serialize};

/// A class of device a slot runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GpuClass {
    /// NVIDIA H100 SXM, 80 GB.
    H100,
    /// NVIDIA H200, 141 GB.
    H200,
    /// NVIDIA A100, 80 GB.
    A100,
    /// NVIDIA L40, 48 GB.
    L40,
    /// A CPU running the tiny model (tests, demos).
    Cpu,
}

/// Number of GPU classes (the length of per-class arrays).
pub const CLASSES: usize = 5;

const GIB: u64 = 1 << 30;

/// What a class is: memory and speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassSpec {
    /// Its name in slot reports and configuration.
    pub name: &'static str,
    /// Device memory usable by one slot, bytes (what `mem_get_info` reports as total).
    pub memory_bytes: u64,
    /// Dense bf16 peak, FLOP/s (0 for the CPU class, which uses measured times).
    pub peak_flops: f64,
    /// Fraction of the peak reached by the DiT (fitted to published timings).
    pub efficiency: f64,
    /// Throughput relative to an H100 on the reference job (for load calculations).
    pub relative_speed: f64,
}

const SPECS: [ClassSpec; CLASSES] = [
    // 790 TFLOP/s: the dense bf16 figure of the architecture doc; 0.6 puts the reference
    // job (163 frames 848×480, 64 steps) at ~9 min, inside the spec's own 6–12 min estimate.
    ClassSpec {
        name: "h100-80gb",
        memory_bytes: 79 * GIB,
        peak_flops: 790e12,
        efficiency: 0.6,
        relative_speed: 1.0,
    },
    // Same compute as the H100 (~790 TFLOP/s measured on a lent H200); more bandwidth.
    ClassSpec {
        name: "h200-141gb",
        memory_bytes: 139 * GIB,
        peak_flops: 790e12,
        efficiency: 0.65,
        relative_speed: 0.65 / 0.6,
    },
    // 312 TFLOP/s; 0.7 matches "about 20 minutes on one A100-80GB" for a 5 s 480p clip.
    ClassSpec {
        name: "a100-80gb",
        memory_bytes: 79 * GIB,
        peak_flops: 312e12,
        efficiency: 0.7,
        relative_speed: 312.0 * 0.7 / (790.0 * 0.6),
    },
    // 181 TFLOP/s; 0.72 matches xDiT's 394 s for 49 frames at 848×480 on one L40.
    ClassSpec {
        name: "l40-48gb",
        memory_bytes: 45 * GIB,
        peak_flops: 181e12,
        efficiency: 0.72,
        relative_speed: 181.0 * 0.72 / (790.0 * 0.6),
    },
    ClassSpec {
        name: "cpu",
        memory_bytes: 16 * GIB,
        peak_flops: 0.0,
        efficiency: 1.0,
        relative_speed: 1.0,
    },
];

impl GpuClass {
    /// Every class, in index order.
    pub const ALL: [Self; CLASSES] = [Self::H100, Self::H200, Self::A100, Self::L40, Self::Cpu];

    /// Its index in per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its memory and speed.
    pub fn spec(self) -> &'static ClassSpec {
        &SPECS[self.index()]
    }

    /// Its name in slot reports (`h100-80gb`, `cpu`, ...).
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The class a slot report names; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|class| {
            let known = class.name();
            name == known || known.split('-').next() == Some(name.as_str())
        })
    }

    /// The class of a slot report, unknown names counted as an A100 (the slowest 80 GB
    /// class we know, so predictions err long); admission uses the reported memory.
    pub fn parse_or_default(name: &str) -> Self {
        Self::parse(name).unwrap_or(Self::A100)
    }
}

impl std::fmt::Display for GpuClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
