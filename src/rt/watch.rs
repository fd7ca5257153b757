//! A watch channel (one latest value, any number of observers) whose wake-ups replay
//! exactly from a simulation's seed.
//!
//! `tokio::sync::watch` spreads its waiting receivers over eight wait lists picked with
//! tokio's thread-local random generator, which is seeded from a process-wide counter
//! that the simulator cannot reset. Receivers are then woken in an order that depends on
//! how many runtimes the process has started before, so two simulations with the same
//! seed in one process schedule their tasks differently. This channel keeps every waiter
//! on one `Notify`, which wakes them in the order they started waiting. It offers the
//! part of tokio's API that detcd uses, with the same semantics, in both worlds.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::Notify;

struct Shared<T> {
    /// The value and its version; the version grows by one with every change.
    state: RwLock<(T, u64)>,
    /// Set when the sender is dropped.
    closed: AtomicBool,
    /// Live receivers, so that a send nobody can see is reported as tokio reports it.
    receivers: AtomicUsize,
    notify: Notify,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, (T, u64)> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, (T, u64)> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a channel holding `init`.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: RwLock::new((init, 0)),
        closed: AtomicBool::new(false),
        receivers: AtomicUsize::new(1),
        notify: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, seen: 0 },
    )
}

/// A borrowed view of the current value. Do not hold it across an await: the sender
/// waits for it.
pub struct Ref<'a, T>(RwLockReadGuard<'a, (T, u64)>);

impl<T> Deref for Ref<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0 .0
    }
}

/// The sender was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("channel closed")
    }
}

impl std::error::Error for RecvError {}

/// Every receiver was dropped; the value that could not be seen is returned.
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> std::fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("channel closed")
    }
}

impl<T: std::fmt::Debug> std::error::Error for SendError<T> {}

/// The sending half; dropping it closes the channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Replaces the value and wakes every receiver, unless there is no receiver left.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.receivers.load(Ordering::Acquire) == 0 {
            return Err(SendError(value));
        }
        {
            let mut state = self.shared.write();
            state.0 = value;
            state.1 += 1;
        }
        self.shared.notify.notify_waiters();
        Ok(())
    }

    /// Lets `modify` change the value in place; receivers are woken only if it returns
    /// true. Returns what `modify` returned.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut state = self.shared.write();
            let modified = modify(&mut state.0);
            if modified {
                state.1 += 1;
            }
            modified
        };
        if modified {
            self.shared.notify.notify_waiters();
        }
        modified
    }

    /// The current value.
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(self.shared.read())
    }

    /// A new receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        let seen = self.shared.read().1;
        Receiver {
            shared: self.shared.clone(),
            seen,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
    }
}

/// A receiving half: it remembers which version of the value it has seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Receiver {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T> Receiver<T> {
    /// The current value, without marking it seen.
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(self.shared.read())
    }

    /// True if the value changed since this receiver last marked it seen.
    pub fn has_changed(&self) -> bool {
        self.shared.read().1 != self.seen
    }

    /// The current value, marked seen.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let state = self.shared.read();
        self.seen = state.1;
        Ref(state)
    }

    /// Waits until the value changes from the last one seen and marks it seen; fails once
    /// the sender is gone and nothing new is left to see.
    pub async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before the checks below, so a change made after them wakes us.
            notified.as_mut().enable();
            let version = self.shared.read().1;
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(RecvError);
            }
            notified.await;
        }
    }

    /// Waits until `accept` holds for the value (the current one included) and returns
    /// it, marked seen; fails if the sender goes away first.
    pub async fn wait_for(
        &mut self,
        mut accept: impl FnMut(&T) -> bool,
    ) -> Result<Ref<'_, T>, RecvError> {
        loop {
            {
                let state = self.shared.read();
                self.seen = state.1;
                if accept(&state.0) {
                    break;
                }
            }
            self.changed().await?;
        }
        Ok(self.borrow_and_update())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_wake_receivers_and_close_ends_them() {
        crate::rt::block_on_main(changes_wake_receivers_and_close_ends_them_async()).unwrap();
    }

    async fn changes_wake_receivers_and_close_ends_them_async() {
        let (tx, mut rx) = channel(0u32);
        let mut rx2 = rx.clone();
        assert!(!tx.send_if_modified(|_| false));
        tx.send(1).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
        let waiter = crate::rt::spawn("test", async move {
            let v = *rx2.wait_for(|v| *v >= 3).await.unwrap();
            v
        });
        tx.send(2).unwrap();
        crate::rt::sleep(std::time::Duration::from_millis(10)).await;
        assert!(tx.send_if_modified(|v| {
            *v = 3;
            true
        }));
        assert_eq!(waiter.await.unwrap(), 3);
        drop(tx);
        rx.changed().await.unwrap();
        assert_eq!(rx.changed().await, Err(RecvError));
    }

    #[test]
    fn send_without_receivers_fails() {
        let (tx, rx) = channel(0u32);
        drop(rx);
        assert_eq!(tx.send(5), Err(SendError(5)));
    }
}
