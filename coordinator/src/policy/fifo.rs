//! The FIFO baselines: one queue in submission order onto free slots, as the seeds' Redis
//! BRPOP design did. `fifo` and `fifo-failfast` know nothing of sizes (the first free slot
//! takes the oldest job); `fifo-admit` refuses what no slot holds and takes, for each free
//! slot, the oldest job that fits it.

use super::{Decision, Placement, Policy, Traits, View, Waiting, fits};

/// A FIFO policy.
#[derive(Debug, Clone, Copy)]
pub struct Fifo {
    traits: Traits,
}

impl Fifo {
    /// Size-blind FIFO; `fail_fast` makes over-sized jobs fail at their first step.
    pub fn blind(fail_fast: bool) -> Self {
        Self {
            traits: Traits {
                admission: false,
                fit_aware: false,
                fail_fast,
            },
        }
    }

    /// FIFO with admission control and fit-aware placement.
    pub fn admit() -> Self {
        Self {
            traits: Traits {
                admission: true,
                fit_aware: true,
                fail_fast: true,
            },
        }
    }
}

impl Policy for Fifo {
    fn name(&self) -> &'static str {
        match (self.traits.fit_aware, self.traits.fail_fast) {
            (true, _) => "fifo-admit",
            (false, true) => "fifo-failfast",
            (false, false) => "fifo",
        }
    }

    fn traits(&self) -> Traits {
        self.traits
    }

    fn decide(&self, view: &View<'_>, queue: &[Waiting]) -> Decision {
        let mut free: Vec<usize> = (0..view.slots.len())
            .filter(|&i| view.slots[i].running.is_none())
            .collect();
        let mut placements = Vec::new();
        if free.is_empty() {
            return Decision::default();
        }
        for index in self.order(view, queue) {
            let job = &queue[index];
            let position = if self.traits.fit_aware {
                free.iter().position(|&slot| fits(&view.slots[slot], job))
            } else {
                Some(0)
            };
            if let Some(position) = position {
                placements.push(Placement {
                    job_id: job.job_id,
                    slot: free.remove(position),
                });
                if free.is_empty() {
                    break;
                }
            }
        }
        Decision {
            placements,
            preemptions: Vec::new(),
        }
    }

    fn order(&self, view: &View<'_>, queue: &[Waiting]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..queue.len())
            .filter(|&i| queue[i].not_before_ms <= view.now_ms)
            .collect();
        order.sort_by_key(|&i| (queue[i].created_at_ms, queue[i].job_id));
        order.dedup_by_key(|i| queue[*i].job_id);
        order
    }
}
