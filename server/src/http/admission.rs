//! HTTP-level admission: a cap on requests in flight, checked before any tokenization, so an
//! overloaded server answers 429 at once instead of queueing unboundedly; and the count that
//! shutdown drains.
//!
//! Invariant: `in_flight` equals the number of live [`Permit`]s; a permit lives exactly as long
//! as its request's response (the body stream of a streamed response), and dropping the last
//! one wakes [`Admission::wait_idle`].

use crate::error::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct Admission {
    in_flight: AtomicUsize,
    cap: usize,
    idle: Notify,
}

/// One admitted request's place.
pub struct Permit {
    adm: Arc<Admission>,
}

impl Admission {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Admission { in_flight: AtomicUsize::new(0), cap: cap.max(1), idle: Notify::new() })
    }

    pub fn try_admit(self: &Arc<Self>) -> Result<Permit, ApiError> {
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // The permit is built first so that the refusal path releases the slot through Drop,
        // the same way every other path does.
        let permit = Permit { adm: Arc::clone(self) };
        if prev >= self.cap {
            drop(permit);
            return Err(ApiError::overloaded(format!(
                "the server is overloaded: {} requests in flight (the limit is running + queued = {})",
                prev, self.cap
            )));
        }
        Ok(permit)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Waits until nothing is in flight or `deadline` passes; true when idle.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            // Register before checking, so a release between the check and the await is seen.
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.adm.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.adm.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cap_is_enforced_and_released() {
        let a = Admission::new(2);
        let p1 = a.try_admit().unwrap();
        let _p2 = a.try_admit().unwrap();
        let e = a.try_admit().err().unwrap();
        assert_eq!(e.status, 429);
        assert_eq!(a.in_flight(), 2);
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        assert!(a.try_admit().is_ok());
    }

    #[tokio::test]
    async fn wait_idle_wakes_on_last_release() {
        let a = Admission::new(4);
        let p = a.try_admit().unwrap();
        let a2 = Arc::clone(&a);
        let t = tokio::spawn(async move { a2.wait_idle(Instant::now() + Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p);
        assert!(t.await.unwrap());
        let p = a.try_admit().unwrap();
        assert!(!a.wait_idle(Instant::now() + Duration::from_millis(20)).await);
        drop(p);
    }
}
