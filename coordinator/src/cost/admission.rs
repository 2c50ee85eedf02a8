//! Admission: a job that no known slot can hold is refused with what it needs, what the
//! largest slot has, and the largest duration and resolution that would fit. The memory
//! figures and the sentence come from [`protocol::memory`] (the gateway refuses with the
//! same at submit); this is the coordinator's backstop for jobs that reach the queue.

use protocol::JobShape;
use protocol::memory::{self, SlotMemory};

pub use protocol::memory::Refusal;

use protocol::cost::GpuClass;

/// Checks `shape` against the known slots (`(class, memory bytes)`); every job is admitted
/// while no slot is known (it waits for one).
pub fn admit(
    shape: &JobShape,
    slots: impl IntoIterator<Item = (GpuClass, u64)>,
) -> Result<(), Refusal> {
    let slots: Vec<SlotMemory> = slots
        .into_iter()
        .map(|(class, memory)| SlotMemory::new(class.name(), memory))
        .collect();
    memory::admit(shape, &slots)
}
