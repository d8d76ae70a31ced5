//! Address ranges: the host indexes of a subnet an EVM group holds, grown
//! without moving what stands, and for placement by counts which EVM
//! indexes each EPM holds.

use std::collections::BTreeMap;

/// EVM indexes stay below 36^5, so port names fit (see naming::evm_port).
const MAX_EVM_INDEX: u64 = 36u64.pow(5);

/// For placement by counts: which EVM indexes (k) each EPM holds. An EVM
/// never moves: an EPM that shrinks gives up the EVMs it gained last, one
/// that grows takes the lowest free indexes (so names and addresses stay
/// compact).
pub fn assign_slots(slots: &mut BTreeMap<String, Ranges>, wanted: &BTreeMap<String, u32>) {
    for (epm, held) in slots.iter_mut() {
        held.truncate(u64::from(wanted.get(epm).copied().unwrap_or(0)));
    }
    slots.retain(|_, held| !held.is_empty());
    for (epm, &want) in wanted {
        let mut held = slots.remove(epm).unwrap_or_default();
        let taken: Vec<&Ranges> = slots.values().collect();
        // Cannot fail: the group's EVMs stay far below MAX_EVM_INDEX.
        let _ = grow(&mut held, u64::from(want), MAX_EVM_INDEX, None, &taken);
        if !held.is_empty() {
            slots.insert(epm.clone(), held);
        }
    }
}

/// Address ranges a group holds in its subnet, as host indexes (index 0 is
/// the first address after the network address).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    pub fn len(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host index of the group's `k`th EVM.
    pub fn index_of(&self, mut k: u64) -> Option<u64> {
        for &(start, n) in &self.0 {
            if k < n {
                return Some(start + k);
            }
            k -= n;
        }
        None
    }

    /// Every index held, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|&(start, n)| start..start + n)
    }

    /// One past the highest index held.
    pub fn end(&self) -> u64 {
        self.0.iter().map(|(start, n)| start + n).max().unwrap_or(0)
    }

    pub fn contains(&self, index: u64) -> bool {
        self.0.iter().any(|&(start, n)| (start..start + n).contains(&index))
    }

    /// The set of these indexes, in any order and with repeats.
    pub fn from_indexes(indexes: impl IntoIterator<Item = u64>) -> Self {
        let mut sorted: Vec<u64> = indexes.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for index in sorted {
            match ranges.last_mut() {
                Some((start, n)) if *start + *n == index => *n += 1,
                _ => ranges.push((index, 1)),
            }
        }
        Ranges(ranges)
    }

    /// Keeps the first `n` indexes (EVMs are removed from the end).
    pub fn truncate(&mut self, mut n: u64) {
        let mut kept = Vec::new();
        for &(start, len) in &self.0 {
            if n == 0 {
                break;
            }
            kept.push((start, len.min(n)));
            n -= len.min(n);
        }
        self.0 = kept;
    }
}

/// Grows `ranges` to `count` indexes, taking the lowest free ones below
/// `capacity` that neither `taken` (e.g. other groups' addresses) nor
/// `reserved` (e.g. the gateway's) hold. Existing ones never move. None
/// when there is no room.
pub fn grow(ranges: &mut Ranges, count: u64, capacity: u64, reserved: Option<u64>, taken: &[&Ranges]) -> Option<()> {
    let mut used: Vec<(u64, u64)> =
        taken.iter().flat_map(|r| r.0.iter().copied()).chain(ranges.0.iter().copied()).collect();
    used.extend(reserved.map(|index| (index, 1)));
    used.sort_unstable();
    let mut missing = count.saturating_sub(ranges.len());
    let mut cursor = 0u64;
    let mut free = Vec::new();
    for &(start, len) in used.iter().chain(std::iter::once(&(capacity, 0))) {
        if start > cursor && missing > 0 {
            let take = (start - cursor).min(missing);
            free.push((cursor, take));
            missing -= take;
        }
        cursor = cursor.max(start + len);
    }
    if missing > 0 {
        return None;
    }
    for (start, len) in free {
        match ranges.0.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += len,
            _ => ranges.0.push((start, len)),
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_from_indexes_are_a_set() {
        let set = Ranges::from_indexes([7, 3, 4, 5, 4, 10]);
        assert_eq!(set, Ranges(vec![(3, 3), (7, 1), (10, 1)]));
        assert!(set.contains(5) && set.contains(10) && !set.contains(6) && !set.contains(11));
        assert_eq!(Ranges::from_indexes(set.iter().filter(|i| *i != 7)), Ranges(vec![(3, 3), (10, 1)]));
    }

    #[test]
    fn ranges_grow_without_moving_and_never_overlap() {
        let mut a = Ranges::default();
        let mut b = Ranges::default();
        grow(&mut a, 10, 100, Some(0), &[]).unwrap();
        assert_eq!(a.0, vec![(1, 10)]);
        grow(&mut b, 5, 100, Some(0), &[&a]).unwrap();
        assert_eq!(b.0, vec![(11, 5)]);
        grow(&mut a, 15, 100, Some(0), &[&b]).unwrap();
        assert_eq!(a.0, vec![(1, 10), (16, 5)]);
        assert_eq!(a.index_of(9), Some(10));
        assert_eq!(a.index_of(10), Some(16));
        a.truncate(12);
        assert_eq!(a.0, vec![(1, 10), (16, 2)]);
        // The freed tail is reused; the gateway (index 0) never is.
        grow(&mut b, 83, 100, Some(0), &[&a]).unwrap();
        assert_eq!(b.len(), 83);
        assert!(grow(&mut b, 100, 100, Some(0), &[&a]).is_none());
        let indexes: Vec<u64> =
            (0..a.len()).map(|k| a.index_of(k).unwrap()).chain((0..b.len()).map(|k| b.index_of(k).unwrap())).collect();
        let unique: std::collections::HashSet<_> = indexes.iter().collect();
        assert_eq!(unique.len(), indexes.len());
        assert!(!indexes.contains(&0));
    }

    #[test]
    fn slots_keep_every_evm_where_it_is() {
        let wanted = |pairs: &[(&str, u32)]| pairs.iter().map(|(e, n)| (e.to_string(), *n)).collect::<BTreeMap<_, _>>();
        let held = |slots: &BTreeMap<String, Ranges>| {
            slots.iter().flat_map(|(e, r)| r.iter().map(move |k| (k, e.clone()))).collect::<BTreeMap<_, _>>()
        };
        let mut slots = BTreeMap::new();
        assign_slots(&mut slots, &wanted(&[("a", 3), ("b", 2)]));
        let first = held(&slots);
        assert_eq!(first.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        // b grows, a shrinks: whatever stays keeps its EPM; freed indexes are reused.
        assign_slots(&mut slots, &wanted(&[("a", 1), ("b", 4), ("c", 1)]));
        let second = held(&slots);
        assert_eq!(second.len(), 6);
        assert_eq!(second.keys().max(), Some(&5));
        let kept = first.iter().filter(|(k, e)| second.get(k) == Some(e)).count();
        assert_eq!(kept, 3, "a keeps one, b keeps both");
        for (epm, n) in [("a", 1), ("b", 4), ("c", 1)] {
            assert_eq!(second.values().filter(|e| *e == epm).count(), n);
        }
        assign_slots(&mut slots, &wanted(&[("b", 4)]));
        assert_eq!(slots.keys().collect::<Vec<_>>(), vec!["b"]);
    }
}
