//! One delivery per key at a time within a consumer.
//!
//! Two deliveries of one key often meet in one consumer: a producer's retry lands next to the
//! original, a redelivery arrives while the first copy is still being handled. Sent to the
//! store at once, the second would be answered "in progress" and handed back to the broker for
//! the rest of the first one's lease (30 s by default) although the first finishes within
//! milliseconds. Waiting here instead, the second runs as soon as the first has settled, and is
//! answered from the store (a duplicate, usually) at once. It also keeps the order of one key's
//! deliveries within the consumer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oncely_core::Key;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct KeyGate {
    held: Mutex<HashMap<Key, Arc<Notify>>>,
}

/// Holds a key until dropped.
pub(crate) struct Held<'g> {
    gate: &'g KeyGate,
    key: Key,
}

impl KeyGate {
    /// Waits until no other delivery of this consumer holds `key`, then holds it.
    pub(crate) async fn enter(&self, key: &Key) -> Held<'_> {
        loop {
            let released = {
                let mut held = self.held.lock().expect("the gate's lock is never poisoned");
                match held.get(key) {
                    // Created under the lock: it sees the holder's `notify_waiters` even if that
                    // comes before the first poll.
                    Some(holder) => holder.clone(),
                    None => {
                        held.insert(key.clone(), Arc::new(Notify::new()));
                        return Held {
                            gate: self,
                            key: key.clone(),
                        };
                    }
                }
            };
            let notified = released.notified();
            // The holder may have left between dropping the lock and here; then the map no
            // longer has this Notify, and `notify_waiters` already ran: check before waiting.
            if self.holds(key, &released) {
                notified.await;
            }
        }
    }

    fn holds(&self, key: &Key, notify: &Arc<Notify>) -> bool {
        let held = self.held.lock().expect("the gate's lock is never poisoned");
        held.get(key)
            .is_some_and(|current| Arc::ptr_eq(current, notify))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self
            .gate
            .held
            .lock()
            .expect("the gate's lock is never poisoned");
        if let Some(notify) = held.remove(&self.key) {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_holder_of_a_key_waits_for_the_first() {
        let gate = Arc::new(KeyGate::default());
        let key = Key::new("k").unwrap();
        let first = gate.enter(&key).await;
        let (gate2, key2) = (gate.clone(), key.clone());
        let second = tokio::spawn(async move {
            let _held = gate2.enter(&key2).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the second waits while the first holds the key"
        );
        let other = gate.enter(&Key::new("other").unwrap()).await;
        drop(other);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second gets the key once the first lets go")
            .unwrap();
    }
}
