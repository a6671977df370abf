//! A bounded memory of recently seen ids (and what goes with them), so that
//! repeats are noticed without remembering every order forever.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map that remembers only its most recently added `capacity` keys.
pub struct RecentMap<K, V> {
    members: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> RecentMap<K, V> {
    /// An empty map that holds at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        RecentMap {
            members: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Adds `key` with `value` (replacing its value if it is there); true if
    /// the key was not there already.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        if self.members.insert(key.clone(), value).is_some() {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.members.remove(&oldest);
        }
        true
    }

    /// What `key` was added with, if it is remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.members.get(key)
    }
}

/// A set that remembers only its most recent `capacity` members.
pub struct RecentSet<T>(RecentMap<T, ()>);

impl<T: Hash + Eq + Clone> RecentSet<T> {
    /// An empty set that holds at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        RecentSet(RecentMap::new(capacity))
    }

    /// Adds `id`; true if it was not there already.
    pub fn insert(&mut self, id: T) -> bool {
        self.0.insert(id, ())
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &T) -> bool {
        self.0.get(id).is_some()
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

    #[test]
    fn recent_map_keeps_values_of_its_newest_keys() {
        let mut map = RecentMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("a", 3);
        assert_eq!(map.get(&"a"), Some(&3), "a value is replaced");
        map.insert("c", 4);
        assert_eq!(map.get(&"a"), None, "the oldest key went");
        assert_eq!((map.get(&"b"), map.get(&"c")), (Some(&2), Some(&4)));
    }
}
