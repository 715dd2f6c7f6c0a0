//! One way to take a lock.
//!
//! A `Mutex` is poisoned when a thread panicked while holding it. Every
//! lock in the daemon guards plain data (counters, the newest status, the
//! result sink), whose last written state is still the best there is:
//! skipping the work instead — as `if let Ok(..) = m.lock()` does — would
//! silently drop every later result and count after one panic. So a
//! poisoned lock is taken as it is, and the first time each is met an ERROR
//! says so (the panic itself was reported where it happened).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a panicking thread poisoned it.
pub fn lock<'a, T>(m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    m.lock()
        .unwrap_or_else(|poisoned: PoisonError<MutexGuard<'a, T>>| {
            // Clearing the flag makes this log line once per poisoning.
            m.clear_poison();
            tracing::error!(
                what = std::any::type_name::<T>(),
                "A thread panicked while holding this lock; carrying on with the state it left."
            );
            poisoned.into_inner()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_with_its_last_state() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = lock(&m2);
            *g = 2;
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
        assert!(!m.is_poisoned(), "cleared, so the error is logged once");
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 3);
    }
}
