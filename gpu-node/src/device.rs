//! Device memory accounting for the slot reports that heartbeats carry.
//!
//! On the CPU (and for the simulated backend) a slot's memory is the configured
//! `memory_bytes_per_slot`; what the backend keeps resident (model weights) and what a
//! running job needs (`protocol::memory::working_bytes`, the one memory model admission
//! uses too) are subtracted from it. After each job a
//! backend that can measure its memory (the `mochi` backend on the CPU: the process's
//! resident set, after handing freed heap pages back with `malloc_trim`) reports it, and a
//! [`MemoryWatch`] compares it with the level after the slot's first job: memory that does
//! not come back marks the slot unhealthy, with the figures as the reason. On a CUDA device,
//! which the backend does not measure, the slot gives the watch its GPU's memory in use as
//! NVML reads it (`crate::nvml::GpuMemory`).

use protocol::JobShape;
use protocol::memory::{self, Model};

/// The memory of one slot's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    total_bytes: u64,
    resident_bytes: u64,
    model: Model,
}

impl DeviceMemory {
    /// A device of `total_bytes` of which the backend keeps `resident_bytes` loaded, running
    /// `model` (whose jobs' working memory [`protocol::memory::working_bytes`] gives).
    pub fn new(total_bytes: u64, resident_bytes: u64, model: Model) -> Self {
        Self {
            total_bytes,
            resident_bytes: resident_bytes.min(total_bytes),
            model,
        }
    }

    /// Device memory in all, bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Memory free while `running` runs (or while idle), bytes; never below zero.
    pub fn free_bytes(&self, running: Option<&JobShape>) -> u64 {
        let used = self
            .resident_bytes
            .saturating_add(running.map_or(0, |shape| memory::working_bytes(shape, self.model)));
        self.total_bytes.saturating_sub(used)
    }
}

/// Resident memory of this process, bytes (Linux `/proc/self/status`, `VmRSS`).
pub fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes the allocator has handed out and not had back (glibc `mallinfo2`: heap blocks in
/// use plus mapped blocks): what the process's live allocations hold, without code pages,
/// stacks or free pages. `None` off glibc.
pub fn heap_in_use_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` reads allocator statistics into a returned struct.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Hands the heap's free pages back to the OS (glibc `malloc_trim`), the host-memory
/// counterpart of trimming a device memory pool. A no-op elsewhere.
pub fn trim_host_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only returns free memory at the top of (and inside) the
        // heap to the kernel; it touches no live allocation and takes no pointer.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Fixes glibc's mmap threshold at 128 KiB. By default glibc raises the threshold each
/// time a large block is freed, after which job-sized tensors come from the heap, where
/// fragmentation keeps them resident; with the threshold fixed they are mapped and unmapped,
/// so a finished job's memory goes back to the OS. A no-op elsewhere.
pub fn pin_host_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD_BYTES: libc::c_int = 128 * 1024;
        // SAFETY: `mallopt` changes an allocator setting; it touches no allocation.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES);
        }
    }
}

/// Watches a slot's memory after each job against the level after its first job (the
/// first job warms up thread pools and allocator arenas, so it sets the baseline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryWatch {
    baseline_bytes: Option<u64>,
    growth_limit_bytes: u64,
}

impl MemoryWatch {
    /// A watch that tolerates `growth_limit_bytes` above the baseline (0: never unhealthy).
    pub fn new(growth_limit_bytes: u64) -> Self {
        Self {
            baseline_bytes: None,
            growth_limit_bytes,
        }
    }

    /// The baseline, once the first job has set it.
    pub fn baseline_bytes(&self) -> Option<u64> {
        self.baseline_bytes
    }

    /// Records the memory in use after a job; `Err(reason)` when it stayed more than the
    /// limit above the baseline.
    pub fn after_job(&mut self, used_bytes: u64) -> Result<(), String> {
        let Some(baseline) = self.baseline_bytes else {
            self.baseline_bytes = Some(used_bytes);
            return Ok(());
        };
        let growth = used_bytes.saturating_sub(baseline);
        if self.growth_limit_bytes > 0 && growth > self.growth_limit_bytes {
            return Err(format!(
                "memory did not come back after a job: {} MiB in use, {} MiB above the {} MiB baseline (limit {} MiB); restart the node",
                used_bytes >> 20,
                growth >> 20,
                baseline >> 20,
                self.growth_limit_bytes >> 20
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_job_sets_the_baseline_and_growth_past_the_limit_is_unhealthy() {
        let mut watch = MemoryWatch::new(100 << 20);
        assert_eq!(watch.baseline_bytes(), None);
        assert!(watch.after_job(1 << 30).is_ok());
        assert_eq!(watch.baseline_bytes(), Some(1 << 30));
        assert!(watch.after_job((1 << 30) + (50 << 20)).is_ok());
        assert!(watch.after_job(900 << 20).is_ok());
        let reason = watch
            .after_job((1 << 30) + (101 << 20))
            .expect_err("over the limit");
        assert!(
            reason.contains("1125 MiB in use, 101 MiB above the 1024 MiB baseline"),
            "{reason}"
        );
        // A limit of 0 never marks the slot unhealthy.
        let mut lenient = MemoryWatch::new(0);
        assert!(lenient.after_job(1).is_ok());
        assert!(lenient.after_job(u64::MAX).is_ok());
    }

    #[test]
    fn reads_this_process_resident_memory() {
        let rss = process_rss_bytes().expect("linux");
        assert!(rss > 1 << 20, "{rss}");
        trim_host_heap();
    }

    fn shape(frames: u32, cfg: bool) -> JobShape {
        JobShape::new(frames, 30, 848, 480, 64, cfg)
    }

    #[test]
    fn idle_device_has_everything_but_the_resident_model_free() {
        let memory = DeviceMemory::new(80 << 30, 20 << 30, Model::Full);
        assert_eq!(memory.total_bytes(), 80 << 30);
        assert_eq!(memory.free_bytes(None), 60 << 30);
    }

    #[test]
    fn a_running_job_takes_the_working_memory_of_the_one_memory_model() {
        let memory = DeviceMemory::new(80 << 30, 0, Model::Full);
        let short = memory.free_bytes(Some(&shape(31, true)));
        let long = memory.free_bytes(Some(&shape(163, true)));
        assert!(short < 80 << 30);
        assert!(long < short);
        let job = shape(163, true);
        assert_eq!(
            memory.free_bytes(Some(&job)),
            (80 << 30) - memory::working_bytes(&job, Model::Full)
        );
        // The weights a backend keeps resident plus that working memory is admission's peak.
        let resident =
            memory::peak_bytes(&job, Model::Full) - memory::working_bytes(&job, Model::Full);
        assert!(resident.abs_diff(30_200_000_000) <= 1, "{resident}");
        // A CPU slot runs the tiny model, with the tiny model's figures.
        let tiny = DeviceMemory::new(8 << 30, 64_000_000, Model::Tiny);
        let small = JobShape::new(7, 2, 64, 64, 2, true);
        assert_eq!(
            tiny.free_bytes(Some(&small)),
            (8 << 30) - 64_000_000 - memory::working_bytes(&small, Model::Tiny)
        );
    }

    #[test]
    fn free_memory_never_underflows() {
        let memory = DeviceMemory::new(1 << 20, 2 << 20, Model::Full);
        assert_eq!(memory.free_bytes(None), 0);
        assert_eq!(memory.free_bytes(Some(&shape(163, true))), 0);
    }
}
