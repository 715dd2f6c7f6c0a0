//! The cross-camera batcher.
//!
//! Due jobs wait here until a batch is full (`max_batch`) or the oldest has
//! waited `max_wait`. Each camera has its own queue, and batches are filled
//! round-robin over the cameras that have work, one job per camera per
//! round, in camera id order, continuing after the camera served last (also
//! across batches): a camera with many tasks cannot starve one with few, and
//! a camera that just got work waits at most one round. A job overtaken by a newer job of the
//! same (camera, task) before dispatch is dropped — counted as a stale skip —
//! and the newer job takes its place and its waiting time, so the queue never
//! holds more than one job per (camera, task) and memory stays bounded
//! however slow inference is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{later, CameraId, Job, JobKey, ScheduleError};

/// Counts of one (camera, task). `enqueued == dispatched + stale_skipped +
/// cancelled + pending`, pending being 0 or 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchCounters {
    pub enqueued: u64,
    pub dispatched: u64,
    /// Overtaken by a newer job before dispatch.
    pub stale_skipped: u64,
    /// Dropped because the camera was removed or the task paused after a
    /// failure.
    pub cancelled: u64,
}

/// Totals over all batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub jobs: u64,
    /// Batches sent because they were full (the rest left on `max_wait`).
    pub full_batches: u64,
}

/// Groups due jobs across cameras. See the module documentation.
/// `F` is the frame payload the jobs carry (see [`Job::with_frame`]).
#[derive(Debug)]
pub struct Batcher<F = ()> {
    max_batch: usize,
    max_wait: Duration,
    /// Waiting jobs per camera, in enqueue order; no empty queues.
    queues: BTreeMap<CameraId, VecDeque<Job<F>>>,
    /// The camera served last; the next job comes from the one after it.
    cursor: Option<CameraId>,
    pending: usize,
    counters: HashMap<Arc<JobKey>, BatchCounters>,
    stats: BatchStats,
}

impl<F> Batcher<F> {
    pub fn new(max_batch: usize, max_wait: Duration) -> Result<Batcher<F>, ScheduleError> {
        if max_batch == 0 {
            return Err(ScheduleError::ZeroBatch);
        }
        Ok(Batcher {
            max_batch,
            max_wait,
            queues: BTreeMap::new(),
            cursor: None,
            pending: 0,
            counters: HashMap::new(),
            stats: BatchStats::default(),
        })
    }

    /// Queues a job. If a job of the same (camera, task) is still waiting, the
    /// new one replaces it in place and the overtaken job is returned.
    pub fn push(&mut self, mut job: Job<F>, now: Instant) -> Option<Job<F>> {
        let counters = self.counters.entry(job.key.clone()).or_default();
        counters.enqueued += 1;
        let queue = self.queues.entry(job.key.camera.clone()).or_default();
        if let Some(waiting) = queue.iter_mut().find(|w| w.key == job.key) {
            counters.stale_skipped += 1;
            job.enqueued = waiting.enqueued;
            return Some(std::mem::replace(waiting, job));
        }
        job.enqueued = now;
        queue.push_back(job);
        self.pending += 1;
        None
    }

    /// A batch if one is ready at `now`: `max_batch` jobs are waiting, or the
    /// oldest has waited `max_wait`.
    pub fn pop_batch(&mut self, now: Instant) -> Option<Vec<Job<F>>> {
        let ready = self.pending >= self.max_batch
            || self
                .oldest_enqueued()
                .is_some_and(|t| now >= later(t, self.max_wait));
        if ready {
            self.take_batch()
        } else {
            None
        }
    }

    /// A batch of whatever waits, ready or not (draining at shutdown).
    pub fn flush(&mut self) -> Option<Vec<Job<F>>> {
        self.take_batch()
    }

    fn take_batch(&mut self) -> Option<Vec<Job<F>>> {
        if self.pending == 0 {
            return None;
        }
        let mut batch = Vec::with_capacity(self.max_batch.min(self.pending));
        while batch.len() < self.max_batch {
            let Some(camera) = self.next_camera() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&camera) else {
                break;
            };
            let Some(job) = queue.pop_front() else {
                break;
            };
            // The camera's other jobs on the same frame come along in its
            // turn: they share one vision-encoder pass (docs/SCHEDULING.md).
            let frame_seq = job.frame_seq;
            let mut turn = vec![job];
            while batch.len() + turn.len() < self.max_batch {
                let Some(i) = queue.iter().position(|j| j.frame_seq == frame_seq) else {
                    break;
                };
                if let Some(j) = queue.remove(i) {
                    turn.push(j);
                }
            }
            if queue.is_empty() {
                self.queues.remove(&camera);
            }
            self.cursor = Some(camera);
            self.pending -= turn.len();
            for job in turn {
                self.counters.entry(job.key.clone()).or_default().dispatched += 1;
                batch.push(job);
            }
        }
        self.stats.batches += 1;
        self.stats.jobs += batch.len() as u64;
        if batch.len() == self.max_batch {
            self.stats.full_batches += 1;
        }
        Some(batch)
    }

    /// The camera after the cursor, in cyclic id order, that has work.
    fn next_camera(&self) -> Option<CameraId> {
        let after = match &self.cursor {
            Some(cursor) => self
                .queues
                .range::<str, _>((Bound::Excluded(&**cursor), Bound::Unbounded))
                .next(),
            None => None,
        };
        after
            .or_else(|| self.queues.iter().next())
            .map(|(camera, _)| camera.clone())
    }

    /// When [`Batcher::pop_batch`] will next have a batch without more
    /// pushes; `None` when nothing waits. A full batch is ready at once.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.oldest_enqueued()?;
        if self.pending >= self.max_batch {
            Some(oldest)
        } else {
            Some(later(oldest, self.max_wait))
        }
    }

    fn oldest_enqueued(&self) -> Option<Instant> {
        // Each queue is in enqueue order (replacements keep their place).
        self.queues
            .values()
            .filter_map(|q| q.front().map(|j| j.enqueued))
            .min()
    }

    /// Drops a camera's waiting jobs (it was removed by a reload).
    pub fn remove_camera(&mut self, camera: &str) -> Vec<Job<F>> {
        let Some(queue) = self.queues.remove(camera) else {
            return Vec::new();
        };
        self.pending -= queue.len();
        for job in &queue {
            self.counters.entry(job.key.clone()).or_default().cancelled += 1;
        }
        queue.into()
    }

    /// Drops the waiting job of one (camera, task), if any (its task was
    /// paused after a failure: the job would fail next to the others).
    pub fn remove_key(&mut self, key: &JobKey) -> Option<Job<F>> {
        let queue = self.queues.get_mut(&key.camera)?;
        let i = queue.iter().position(|j| *j.key == *key)?;
        let job = queue.remove(i)?;
        if queue.is_empty() {
            self.queues.remove(&key.camera);
        }
        self.pending -= 1;
        self.counters.entry(job.key.clone()).or_default().cancelled += 1;
        Some(job)
    }

    /// Jobs waiting now; at most one per (camera, task).
    pub fn len(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub fn counters(&self, key: &JobKey) -> BatchCounters {
        self.counters.get(key).copied().unwrap_or_default()
    }

    /// Counters of every (camera, task) seen, in key order.
    pub fn all_counters(&self) -> Vec<(Arc<JobKey>, BatchCounters)> {
        let mut all: Vec<_> = self.counters.iter().map(|(k, c)| (k.clone(), *c)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
