//! Wakes held back until a batch of work is done.
//!
//! A committed batch (or what one read from Redis brought) wakes many socket tasks, most of
//! them on other threads. A runtime woken from another thread is woken by a system call
//! each time; held here until the batch is done, the wakes cost one call per thread and
//! batch (the socket threads' relays take them from there).

use std::cell::RefCell;
use std::task::Waker;

thread_local! {
    /// Inside [`holding_wakes`] on this thread: the wakes held back until it returns.
    static HELD: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Runs `f`, and wakes what [`wake_or_hold`] is given on this thread meanwhile only once
/// `f` returns (or panics). A runtime woken from another thread is woken by a system call
/// each time; a committed batch wakes many tasks there, one by one, while that thread may
/// be taking them as fast as they come. Held, they cost one call per thread and batch.
/// Calls inside it leave the waking to the outermost.
pub fn holding_wakes<R>(f: impl FnOnce() -> R) -> R {
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // Taken out first: a task woken here may hold or wake again.
            let held = HELD
                .try_with(|held| held.borrow_mut().take())
                .ok()
                .flatten();
            for waker in held.into_iter().flatten() {
                waker.wake();
            }
        }
    }
    let outermost = HELD
        .try_with(|held| {
            let mut held = held.borrow_mut();
            let outermost = held.is_none();
            if outermost {
                *held = Some(Vec::new());
            }
            outermost
        })
        .unwrap_or(false);
    let _release = outermost.then(|| Release);
    f()
}

/// Wakes `waker` now, or, inside [`holding_wakes`] on this thread, when that returns. The
/// waker must not panic: one that does leaves the wakes held after it unwoken.
pub fn wake_or_hold(waker: Waker) {
    let mut waker = Some(waker);
    let _ = HELD.try_with(|held| {
        if let Some(list) = held.borrow_mut().as_mut() {
            list.extend(waker.take());
        }
    });
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A waker that counts its wakes.
    pub(crate) struct Count(pub(crate) AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn counted() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn wakes_held_during_a_batch_come_when_the_outermost_batch_ends() {
        let (count, waker) = counted();
        let woken = || count.0.load(Ordering::SeqCst);
        wake_or_hold(waker.clone());
        assert_eq!(woken(), 1, "woken at once outside a batch");
        holding_wakes(|| {
            wake_or_hold(waker.clone());
            holding_wakes(|| wake_or_hold(waker.clone()));
            assert_eq!(woken(), 1, "held until the outermost batch ends");
            // Another thread's wakes are its own.
            std::thread::scope(|s| {
                s.spawn(|| wake_or_hold(waker.clone()));
            });
            assert_eq!(woken(), 2, "another thread's wake is not held");
        });
        assert_eq!(woken(), 4, "both held wakes come at the end");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            holding_wakes(|| {
                wake_or_hold(waker.clone());
                panic!("mid-batch");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(woken(), 5, "a batch that panics still wakes what it held");
        wake_or_hold(waker);
        assert_eq!(woken(), 6, "nothing is held after a panic");
    }
}
