//! The eviction order of cached, unreferenced blocks: an intrusive doubly linked list over block
//! indices (two arrays of links), so insert, remove and pop are O(1) and allocation-free.
//!
//! Invariants: a block is in the list at most once (`contains` is exact); `len` equals the number
//! of linked blocks; the front is the least recently released block, the next to evict.

const NIL: u32 = u32::MAX;

/// LRU list of block indices `< capacity`.
#[derive(Debug, Clone)]
pub(crate) struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Lru {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            prev: vec![NIL; capacity],
            next: vec![NIL; capacity],
            linked: vec![false; capacity],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.linked.get(i as usize).copied().unwrap_or(false)
    }

    /// Appends `i` as the most recently used. No-op if already linked or out of range.
    pub(crate) fn push_back(&mut self, i: u32) {
        let Some(&linked) = self.linked.get(i as usize) else {
            return;
        };
        if linked {
            return;
        }
        let iu = i as usize;
        self.prev[iu] = self.tail;
        self.next[iu] = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.next[self.tail as usize] = i;
        }
        self.tail = i;
        self.linked[iu] = true;
        self.len += 1;
    }

    /// Unlinks `i`; returns whether it was linked.
    pub(crate) fn remove(&mut self, i: u32) -> bool {
        if !self.contains(i) {
            return false;
        }
        let iu = i as usize;
        let (p, n) = (self.prev[iu], self.next[iu]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[iu] = NIL;
        self.next[iu] = NIL;
        self.linked[iu] = false;
        self.len -= 1;
        true
    }

    /// Unlinks and returns the least recently used block.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let h = self.head;
        if h == NIL {
            return None;
        }
        self.remove(h);
        Some(h)
    }

    /// Walks the list front to back, returning the visited indices, or a description of the
    /// first broken link (cycle, bad back-link, wrong length).
    pub(crate) fn walk(&self) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(self.len);
        let mut cur = self.head;
        let mut prev = NIL;
        while cur != NIL {
            if out.len() > self.len {
                return Err(format!("LRU list longer than its length {} (cycle?)", self.len));
            }
            let cu = cur as usize;
            if cu >= self.linked.len() || !self.linked[cu] {
                return Err(format!("LRU links to unlinked block {cur}"));
            }
            if self.prev[cu] != prev {
                return Err(format!("LRU back-link of block {cur} is broken"));
            }
            out.push(cur);
            prev = cur;
            cur = self.next[cu];
        }
        if prev != self.tail {
            return Err("LRU tail does not end the list".into());
        }
        if out.len() != self.len {
            return Err(format!("LRU holds {} blocks but counts {}", out.len(), self.len));
        }
        let flagged = self.linked.iter().filter(|&&l| l).count();
        if flagged != self.len {
            return Err(format!("{flagged} blocks flagged as linked, list has {}", self.len));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn order_remove_and_pop() {
        let mut l = Lru::new(5);
        for i in [3, 1, 4, 0] {
            l.push_back(i);
        }
        l.push_back(1); // already linked: no-op, keeps its place
        l.push_back(9); // out of range: ignored
        assert_eq!(l.walk().unwrap(), vec![3, 1, 4, 0]);
        assert!(l.remove(4));
        assert!(!l.remove(4));
        assert_eq!(l.pop_front(), Some(3));
        assert_eq!(l.walk().unwrap(), vec![1, 0]);
        assert_eq!(l.pop_front(), Some(1));
        assert_eq!(l.pop_front(), Some(0));
        assert_eq!(l.pop_front(), None);
        assert_eq!(l.len(), 0);
        assert!(l.walk().unwrap().is_empty());
    }
}
