//! The server-wide budget of memory held by admitted requests: bytes of bodies being read plus
//! their decoded and tokenized inputs and their responses. A request reserves before it reads
//! or decodes more; when the budget is full it is refused (429 with `Retry-After`) before more
//! of its body is read. An empty budget admits any single request, so one large request is never
//! refused forever.

use crate::error::ApiError;
use crate::metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of admitted work in flight, with a ceiling.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// The ceiling in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Adds `bytes` unless that would pass the ceiling (an empty budget takes anything).
    fn try_add(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used > 0 && used.saturating_add(bytes) > self.limit {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(used, used + bytes, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    metrics::budget_bytes(used + bytes);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::SeqCst);
        metrics::budget_bytes(before - bytes);
    }

    /// An empty reservation, grown as the request needs more.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }
}

/// Bytes one request holds under the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` from now on: shrinking always succeeds, growing fails with 429 when the
    /// budget cannot take the difference (the reservation is then unchanged).
    pub fn resize(&mut self, bytes: usize) -> Result<(), ApiError> {
        if bytes <= self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
            return Ok(());
        }
        if !self.budget.try_add(bytes - self.bytes) {
            metrics::budget_refusal();
            return Err(ApiError::busy(format!(
                "The server is at capacity: requests in flight hold {} of its {} MiB. Please retry after a short wait.",
                self.budget.used() >> 20,
                self.budget.limit() >> 20
            )));
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Holds `more` bytes on top of what is held.
    pub fn grow(&mut self, more: usize) -> Result<(), ApiError> {
        self.resize(self.bytes.saturating_add(more))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        a.resize(150).unwrap(); // an empty budget takes one large request
        let mut b = budget.reservation();
        assert_eq!(b.grow(1).unwrap_err().status, 429);
        a.resize(60).unwrap();
        b.grow(40).unwrap();
        assert!(b.grow(1).is_err());
        assert_eq!(b.bytes(), 40);
        drop(a);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
