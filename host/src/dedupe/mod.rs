//! Exact `messageId` deduplication per source.
//!
//! SDKs resend a batch when an answer is slow or lost (analytics-node gives up after 10 s and
//! sends again); each copy must be stored once. The index keys on a 128-bit hash of the message
//! id (no Bloom filter: no false positives drop real events), bounded by a time window and an id
//! count per source.
//!
//! An id is first *pending* (its append is in flight), then *durable*. A duplicate of a pending id
//! waits for the original's outcome: acknowledged if the original became durable, failed if the
//! original failed. So a 200 for a duplicate always means the event is in the log.
//!
//! The index is persisted by [`journal`] beside the log, so it does not depend on segments that
//! retention may delete.

pub mod journal;

use std::collections::{HashMap, VecDeque, hash_map};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::DedupeConfig;

const SHARDS: usize = 16;

/// Hash of a message id as the index and the log's record header store it. Never 0 (0 means
/// "no dedupe key" in a record header).
pub fn key_of(message_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(message_id.as_bytes()).max(1)
}

/// Where the outcome of a pending id's append is published: `Some(true)` once durable.
type Outcome = Arc<watch::Sender<Option<bool>>>;

enum Entry {
    /// Shares the reserving request's [`Ticket`]: a clone of an `Arc` per id, and a receiver
    /// only for a duplicate that waits.
    Pending(Outcome),
    Durable {
        at_ms: i64,
    },
}

/// Keys are already uniform (xxh3 of the id); a fast hasher, seeded per process so that crafted
/// ids cannot aim at one bucket, is all the map needs.
type KeyMap = HashMap<u128, Entry, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shard {
    map: KeyMap,
    /// Durable ids in the order they became durable, for eviction by age and count.
    order: VecDeque<(i64, u128)>,
}

impl Shard {
    fn evict(&mut self, now_ms: i64, window_ms: i64, max: usize) {
        while let Some(&(at, key)) = self.order.front() {
            if at >= now_ms - window_ms && self.order.len() <= max {
                break;
            }
            self.order.pop_front();
            // One lookup per evicted id: the map is large and each lookup a likely cache miss.
            if let hash_map::Entry::Occupied(e) = self.map.entry(key)
                && matches!(e.get(), Entry::Durable { at_ms } if *at_ms == at)
            {
                e.remove();
            }
        }
    }

    fn insert_durable(&mut self, key: u128, at_ms: i64) {
        self.map.insert(key, Entry::Durable { at_ms });
        self.order.push_back((at_ms, key));
    }
}

/// What the index says about an id.
pub enum Seen {
    /// First time: the id is now reserved for this request's ticket.
    New,
    /// An earlier copy is durable: acknowledge and drop.
    Durable,
    /// An earlier copy is being appended: wait for its outcome (`true` = durable).
    Pending(watch::Receiver<Option<bool>>),
}

/// One request's claim on the ids it reserves. Completing it resolves every duplicate waiting on
/// those ids.
pub struct Ticket {
    tx: Outcome,
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket {
            tx: Arc::new(watch::Sender::new(None)),
        }
    }
}

/// The index of one source.
pub struct DedupeIndex {
    shards: Box<[Mutex<Shard>]>,
    window_ms: i64,
    max_per_shard: usize,
}

impl DedupeIndex {
    pub fn new(config: &DedupeConfig) -> Self {
        DedupeIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            window_ms: i64::try_from(config.window.as_millis()).unwrap_or(i64::MAX / 2),
            max_per_shard: config.max_ids.div_ceil(SHARDS).max(1),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms as u64)
    }

    fn shard(&self, key: u128) -> &Mutex<Shard> {
        &self.shards[(key as usize) % SHARDS]
    }

    /// Looks `key` up and, when it is new, reserves it for `ticket`.
    pub fn check(&self, key: u128, now_ms: i64, ticket: &Ticket) -> Seen {
        let mut shard = self.shard(key).lock();
        match shard.map.entry(key) {
            hash_map::Entry::Occupied(e) => match e.get() {
                Entry::Durable { at_ms } if *at_ms >= now_ms - self.window_ms => Seen::Durable,
                Entry::Pending(tx) => Seen::Pending(tx.subscribe()),
                Entry::Durable { .. } => {
                    // Expired but not evicted yet: a new event with an old id.
                    *e.into_mut() = Entry::Pending(ticket.tx.clone());
                    Seen::New
                }
            },
            hash_map::Entry::Vacant(e) => {
                e.insert(Entry::Pending(ticket.tx.clone()));
                Seen::New
            }
        }
    }

    /// Settles the ids `ticket` reserved: durable (kept for the window) or failed (forgotten, so
    /// a retry is accepted). Then wakes every duplicate waiting on them.
    pub fn complete(&self, keys: &[u128], ticket: Ticket, durable: bool, now_ms: i64) {
        for &key in keys {
            let mut shard = self.shard(key).lock();
            let hash_map::Entry::Occupied(mut e) = shard.map.entry(key) else {
                continue;
            };
            if !matches!(e.get(), Entry::Pending(tx) if Arc::ptr_eq(tx, &ticket.tx)) {
                continue;
            }
            if durable {
                e.insert(Entry::Durable { at_ms: now_ms });
                shard.order.push_back((now_ms, key));
                let max = self.max_per_shard;
                shard.evict(now_ms, self.window_ms, max);
            } else {
                e.remove();
            }
        }
        ticket.tx.send_replace(Some(durable));
    }

    /// Records an id known to be durable (restoring state at start-up).
    pub fn restore(&self, key: u128, at_ms: i64, now_ms: i64) {
        if at_ms < now_ms - self.window_ms {
            return;
        }
        let mut shard = self.shard(key).lock();
        shard.insert_durable(key, at_ms);
        let max = self.max_per_shard;
        shard.evict(now_ms, self.window_ms, max);
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Waits for the original of a duplicate; true if it became durable.
pub async fn wait_original(mut rx: watch::Receiver<Option<bool>>) -> bool {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or(false),
        // The original's request vanished without settling: treat as failed so the client
        // retries; never acknowledge what may not be stored.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(window_secs: u64, max_ids: usize) -> DedupeIndex {
        DedupeIndex::new(&DedupeConfig {
            window: Duration::from_secs(window_secs),
            max_ids,
        })
    }

    #[tokio::test]
    async fn duplicate_waits_for_the_original() {
        let idx = index(60, 1000);
        let k = key_of("m1");
        let t1 = Ticket::default();
        assert!(matches!(idx.check(k, 0, &t1), Seen::New));
        let Seen::Pending(rx) = idx.check(k, 0, &Ticket::default()) else {
            panic!("second copy must wait for the first");
        };
        let waiter = tokio::spawn(wait_original(rx));
        idx.complete(&[k], t1, true, 0);
        assert!(waiter.await.unwrap());
        assert!(matches!(idx.check(k, 1, &Ticket::default()), Seen::Durable));
    }

    #[tokio::test]
    async fn a_failed_original_fails_its_duplicate_and_frees_the_id() {
        let idx = index(60, 1000);
        let k = key_of("m1");
        let t1 = Ticket::default();
        idx.check(k, 0, &t1);
        let Seen::Pending(rx) = idx.check(k, 0, &Ticket::default()) else {
            panic!()
        };
        idx.complete(&[k], t1, false, 0);
        assert!(!wait_original(rx).await);
        assert!(matches!(idx.check(k, 0, &Ticket::default()), Seen::New));
    }

    #[test]
    fn ids_expire_by_window_and_count() {
        let idx = index(10, SHARDS * 2);
        for i in 0..1000 {
            let t = Ticket::default();
            let k = key_of(&format!("m{i}"));
            idx.check(k, i, &t);
            idx.complete(&[k], t, true, i);
        }
        assert!(idx.len() <= SHARDS * 2);
        let old = key_of("m0");
        assert!(matches!(
            idx.check(old, 20_000, &Ticket::default()),
            Seen::New
        ));
    }
}
