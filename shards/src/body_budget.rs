//! A shard's budget for buffered request bodies. `--max-payload-size` bounds one
//! request; this bounds them all together, so many clients sending large bodies at
//! once (slowly, say) get a 503 on one shard instead of taking the host's memory: a
//! failed allocation aborts the whole process, not one connection.

use std::cell::Cell;

/// Bytes of body buffers a shard may hold at once (`--body-buffer-budget-bytes`).
pub struct BodyBudget {
    limit: u64,
    used: Cell<u64>,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Self {
        BodyBudget {
            limit,
            used: Cell::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An empty charge, to grow with one request's buffer.
    pub fn charge(&self) -> BodyCharge<'_> {
        BodyCharge {
            budget: self,
            bytes: 0,
        }
    }

    /// Bytes held by requests in progress.
    pub fn used(&self) -> u64 {
        self.used.get()
    }
}

/// What one request's body buffer holds of the budget; given back when dropped.
pub struct BodyCharge<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl BodyCharge<'_> {
    /// Grows the charge to `capacity` bytes. False, and nothing charged, when the
    /// budget cannot cover it.
    pub fn cover(&mut self, capacity: usize) -> bool {
        let capacity = capacity as u64;
        if capacity <= self.bytes {
            return true;
        }
        let more = capacity - self.bytes;
        let used = self.budget.used.get();
        if used + more > self.budget.limit {
            return false;
        }
        self.budget.used.set(used + more);
        self.bytes = capacity;
        true
    }
}

impl Drop for BodyCharge<'_> {
    fn drop(&mut self) {
        self.budget.used.set(self.budget.used.get() - self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_to_the_limit_and_return_when_dropped() {
        let b = BodyBudget::new(100);
        let mut one = b.charge();
        assert!(one.cover(60));
        assert!(one.cover(40)); // already covered
        let mut two = b.charge();
        assert!(!two.cover(50));
        assert!(two.cover(40));
        assert_eq!(b.used(), 100);
        drop(one);
        assert_eq!(b.used(), 40);
        assert!(two.cover(90));
        drop(two);
        assert_eq!(b.used(), 0);
    }
}
