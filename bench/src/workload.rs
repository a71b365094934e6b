//! The events: 36-character UUID keys, a share of them redeliveries of earlier ones.

use oncely::Key;

/// A sequence of event keys.
#[derive(Clone, Debug)]
pub struct Workload {
    keys: Vec<Key>,
    distinct: usize,
}

impl Workload {
    /// `events` keys; each with probability `duplicate_ratio` repeats an earlier one.
    pub fn generate(events: usize, duplicate_ratio: f64, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut keys: Vec<Key> = Vec::with_capacity(events);
        let mut distinct = 0;
        for i in 0..events {
            if i > 0 && rng.f64() < duplicate_ratio {
                // Redeliveries cluster near the original, as broker retries do.
                let back = rng.usize(1..=i.min(10_000));
                keys.push(keys[i - back].clone());
            } else {
                keys.push(uuid_key(&mut rng));
                distinct += 1;
            }
        }
        Workload { keys, distinct }
    }

    /// `n` distinct keys.
    pub fn distinct(n: usize, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        Workload {
            keys: (0..n).map(|_| uuid_key(&mut rng)).collect(),
            distinct: n,
        }
    }

    /// The first `n` events.
    pub fn prefix(&self, n: usize) -> Self {
        let keys = self.keys[..n.min(self.keys.len())].to_vec();
        let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len();
        Workload { keys, distinct }
    }

    /// The keys in delivery order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many distinct keys.
    pub fn distinct_keys(&self) -> usize {
        self.distinct
    }
}

fn uuid_key(rng: &mut fastrand::Rng) -> Key {
    let uuid = uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid();
    crate::key(&uuid.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_a_tenth_are_redeliveries_of_earlier_keys() {
        let w = Workload::generate(100_000, 0.1, 7);
        let dup = w.len() - w.distinct_keys();
        assert!((9_000..11_000).contains(&dup), "{dup}");
        assert_eq!(w.keys()[0].as_str().len(), 36);
        assert_eq!(w.prefix(10).len(), 10);
    }
}
