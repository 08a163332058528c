//! Weighted choice among a rule's backends.

/// Items with positive weights; picks one proportionally to its weight.
#[derive(Debug)]
pub struct WeightedSet<T> {
    /// `(cumulative weight up to and including this item, item)`; zero weights are left out.
    items: Vec<(u64, T)>,
    total: u64,
}

impl<T> WeightedSet<T> {
    /// `None` when no item has a positive weight.
    pub fn new(weighted: impl IntoIterator<Item = (T, u32)>) -> Option<Self> {
        let mut total = 0u64;
        let mut items = Vec::new();
        for (item, weight) in weighted {
            if weight > 0 {
                total += u64::from(weight);
                items.push((total, item));
            }
        }
        (total > 0).then_some(Self { items, total })
    }

    /// Sum of weights.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The item whose weight interval holds `point`, reduced modulo the total.
    pub fn pick_at(&self, point: u64) -> &T {
        let point = point % self.total;
        let index = self.items.partition_point(|(end, _)| *end <= point);
        // `point < total` and the last cumulative end is `total`, so an item is always found.
        &self.items[index.min(self.items.len() - 1)].1
    }

    /// A random item, weighted.
    pub fn pick(&self) -> &T {
        if self.items.len() == 1 {
            return &self.items[0].1;
        }
        self.pick_at(rand::random::<u64>())
    }

    /// Every item with a positive weight.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, item)| item)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn zero_weights_are_never_picked() {
        let set = WeightedSet::new([("a", 0), ("b", 5), ("c", 0)]).unwrap();
        for point in 0..100 {
            assert_eq!(*set.pick_at(point), "b");
        }
        assert!(WeightedSet::new([("a", 0)]).is_none());
    }

    proptest! {
        /// Walking every point of the weight space hits each item exactly `weight` times.
        #[test]
        fn picks_are_proportional(weights in prop::collection::vec(0u32..50, 1..8)) {
            let items: Vec<_> = weights.iter().copied().enumerate().collect();
            let Some(set) = WeightedSet::new(items.iter().map(|(i, w)| (*i, *w))) else {
                prop_assert!(weights.iter().all(|w| *w == 0));
                return Ok(());
            };
            let mut counts = vec![0u64; weights.len()];
            for point in 0..set.total() {
                counts[*set.pick_at(point)] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(counts[i], u64::from(*w));
            }
        }

        /// Any point, however large, picks an item with a positive weight.
        #[test]
        fn any_point_picks_a_weighted_item(
            weights in prop::collection::vec(0u32..1000, 1..8),
            point in any::<u64>(),
        ) {
            if let Some(set) = WeightedSet::new(weights.iter().copied().enumerate()) {
                let i = *set.pick_at(point);
                prop_assert!(weights[i] > 0);
            }
        }
    }
}
