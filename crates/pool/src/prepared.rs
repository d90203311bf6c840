//! The statements prepared on one server connection, bounded: past the limit the least
//! recently used is closed on the server (and prepared again when a client needs it), so that
//! neither a backend nor the proxy grows without end when clients prepare ever new
//! statements, as ORMs and drivers' automatic preparation do over days.

use hashlink::LinkedHashMap;

/// Statement ids (the proxy-wide ids of `statements.rs`), least recently used first.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// id → the use count at its last use.
    used: LinkedHashMap<u64, u64>,
    /// Counts uses.
    clock: u64,
    /// `clock` when the client's current batch began: statements used since then may have
    /// portals open in the batch (closing a statement closes them), so they stay.
    batch_start: u64,
    /// Most statements kept; 0: no limit.
    limit: usize,
}

impl PreparedSet {
    pub fn with_limit(limit: usize) -> PreparedSet {
        PreparedSet {
            limit,
            ..PreparedSet::default()
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.used.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Marks `id` used now; false when it is not prepared here.
    pub fn touch(&mut self, id: u64) -> bool {
        self.clock += 1;
        let now = self.clock;
        match self.used.to_back(&id) {
            Some(t) => {
                *t = now;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared (and used now). Returns the statements to close on the
    /// server to stay within the limit, least recently used first; statements used in the
    /// current batch are never among them (the set may then exceed the limit for a while).
    pub fn insert(&mut self, id: u64) -> Vec<u64> {
        self.clock += 1;
        self.used.insert(id, self.clock);
        let mut evicted = Vec::new();
        while self.limit > 0 && self.used.len() > self.limit {
            match self.used.front() {
                Some((&old, &t)) if t < self.batch_start && old != id => {
                    self.used.pop_front();
                    evicted.push(old);
                }
                _ => break,
            }
        }
        evicted
    }

    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// The client's batch ended (Sync): its statements may be closed from now on.
    pub fn batch_done(&mut self) {
        self.batch_start = self.clock + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut p = PreparedSet::with_limit(2);
        assert!(p.insert(1).is_empty());
        assert!(p.insert(2).is_empty());
        p.batch_done();
        assert!(p.touch(1));
        p.batch_done();
        assert_eq!(p.insert(3), vec![2]);
        assert!(p.contains(1) && p.contains(3) && !p.contains(2));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn statements_of_the_current_batch_stay() {
        let mut p = PreparedSet::with_limit(1);
        assert!(p.insert(1).is_empty());
        // Same batch: 1 may have a portal open.
        assert!(p.insert(2).is_empty());
        assert_eq!(p.len(), 2);
        p.batch_done();
        assert_eq!(p.insert(3), vec![1, 2]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn no_limit() {
        let mut p = PreparedSet::with_limit(0);
        for i in 0..1000 {
            assert!(p.insert(i).is_empty());
        }
        assert_eq!(p.len(), 1000);
    }
}
