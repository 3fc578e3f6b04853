//! Counters a job keeps while it runs, readable while it runs and reported when it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count shared by the subtasks that add to it.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Replaces the value (for gauges such as the last checkpoint's duration).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// Raises the value to `n` if it is lower (a gauge of the largest of several).
    pub fn max(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The named counters of a job, e.g. `stage1.window-aggregate.records_in`.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    counters: Arc<Mutex<Vec<(String, Counter)>>>,
}

impl JobMetrics {
    /// The counter called `name`, created at zero if new.
    pub fn counter(&self, name: &str) -> Counter {
        let mut counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        if let Some((_, c)) = counters.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Counter::default();
        counters.push((name.to_string(), c.clone()));
        c
    }
    /// Adds an existing counter under `name` (an operator's own, e.g. late records).
    pub fn register(&self, name: &str, counter: Counter) {
        let mut counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        counters.retain(|(n, _)| n != name);
        counters.push((name.to_string(), counter));
    }
    /// Every counter and its value, in creation order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        counters.iter().map(|(n, c)| (n.clone(), c.get())).collect()
    }
    /// The value of `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_name() {
        let m = JobMetrics::default();
        m.counter("a").add(2);
        m.counter("a").add(3);
        assert_eq!(m.get("a"), Some(5));
        assert_eq!(m.get("b"), None);
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<JobMetrics>();
        check::<Counter>();
    }
}
