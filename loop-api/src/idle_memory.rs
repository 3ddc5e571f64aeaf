//! Memory that follows the load: what a loop keeps of the stores a burst
//! made grow.
//!
//! When an iteration starts with nothing ready, the loop trims its own
//! stores (the ready queue, the `call_soon` slab, the timer heap, the
//! reader, writer and transport maps) and calls [`Driver::trim`] for the
//! driver's (operations in flight, per-descriptor state). A store more than
//! [`IDLE_KEEP`] items large and at most a quarter full is shrunk to twice
//! what it holds, or to [`IDLE_KEEP`]: a burst that comes back pays to grow
//! again, a copy of each item or fewer, small beside the work itself.
//!
//! Stores whose keys are handed out cannot move an entry: the `call_soon`
//! slab shrinks only once none of its entries is in use, and a completion
//! driver's operation table only drops the free slots past the last one in
//! use.
//!
//! [`Driver::trim`]: crate::driver::Driver::trim

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// What an idle loop keeps of each store, in items.
pub const IDLE_KEEP: usize = 1024;

/// The capacity to shrink a store of `len` items in `capacity` to, if a
/// past burst left it worth shrinking.
pub fn shrunk_capacity(len: usize, capacity: usize) -> Option<usize> {
    (capacity > IDLE_KEEP && len <= capacity / 4).then(|| (len * 2).max(IDLE_KEEP))
}

/// Shrinks `map` if a past burst left it worth shrinking.
pub fn trim_map<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if let Some(keep) = shrunk_capacity(map.len(), map.capacity()) {
        map.shrink_to(keep);
    }
}

/// Shrinks `set` if a past burst left it worth shrinking.
pub fn trim_set<T: Eq + Hash>(set: &mut HashSet<T>) {
    if let Some(keep) = shrunk_capacity(set.len(), set.capacity()) {
        set.shrink_to(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_mostly_empty_store_shrinks() {
        assert_eq!(shrunk_capacity(0, IDLE_KEEP), None, "small enough");
        assert_eq!(shrunk_capacity(0, 64 * IDLE_KEEP), Some(IDLE_KEEP));
        assert_eq!(
            shrunk_capacity(4 * IDLE_KEEP, 16 * IDLE_KEEP),
            Some(8 * IDLE_KEEP)
        );
        assert_eq!(
            shrunk_capacity(5 * IDLE_KEEP, 16 * IDLE_KEEP),
            None,
            "in use"
        );
    }

    #[test]
    fn a_map_gives_back_its_burst() {
        let mut map: HashMap<i32, u64> = (0..100_000).map(|i| (i, 0)).collect();
        map.retain(|&k, _| k < 10);
        trim_map(&mut map);
        assert!(map.capacity() < 2 * IDLE_KEEP, "kept {}", map.capacity());
        assert_eq!(map.len(), 10);
        assert!((0..10).all(|k| map.contains_key(&k)));
    }

    #[test]
    fn a_set_gives_back_its_burst() {
        let mut set: HashSet<i32> = (0..100_000).collect();
        set.retain(|&k| k < 10);
        trim_set(&mut set);
        assert!(set.capacity() < 2 * IDLE_KEEP, "kept {}", set.capacity());
        assert_eq!(set.len(), 10);
        assert!((0..10).all(|k| set.contains(&k)));
    }
}
