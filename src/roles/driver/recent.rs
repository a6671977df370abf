//! A bounded memory of recently seen ids, so that repeats are noticed
//! without remembering every order forever.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// A set that remembers only its most recent `capacity` members.
pub struct RecentSet<T> {
    members: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Hash + Eq + Clone> RecentSet<T> {
    /// An empty set that holds at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        RecentSet {
            members: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Adds `id`; true if it was not there already.
    pub fn insert(&mut self, id: T) -> bool {
        if !self.members.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.members.remove(&oldest);
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &T) -> bool {
        self.members.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_set_forgets_the_oldest() {
        let id = |n: u32| n;
        let mut set = RecentSet::new(2);
        assert!(set.insert(id(1)));
        assert!(!set.insert(id(1)));
        assert!(set.insert(id(2)));
        assert!(set.insert(id(3)));
        assert!(!set.contains(&id(1)));
        assert!(set.insert(id(1)), "1 was forgotten");
    }
}
