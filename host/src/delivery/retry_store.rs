//! The durable per-destination retry store: events held back because delivery failed for them
//! or for an earlier event of the same ordering key.
//!
//! Holding them here lets the destination's log offset advance past them (other keys keep
//! flowing) without losing them. It is a journal of JSON lines (`put`, `update`, `remove`),
//! fsynced before the destination commits its offset, replayed at start-up (a torn last line is
//! ignored), and rewritten atomically once it is mostly dead entries. Per key, entries keep
//! their order: only a key's first entry is ever retried, the others wait behind it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One held event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub id: u64,
    pub key: String,
    pub source: String,
    pub log_offset: u64,
    pub event: serde_json::Value,
    /// Delivery attempts that failed (0: never tried, waiting behind its key's first entry).
    pub attempts: u32,
    /// When delivery first failed (ms since the epoch), for the max-age rule.
    pub first_failed_ms: i64,
    /// Not retried before this time (ms since the epoch).
    pub next_at_ms: i64,
    pub last_error: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Put(Held),
    Update {
        id: u64,
        attempts: u32,
        first_failed_ms: i64,
        next_at_ms: i64,
        last_error: String,
    },
    Remove {
        id: u64,
    },
}

pub struct RetryStore {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Held>,
    by_key: HashMap<String, VecDeque<u64>>,
    next_id: u64,
    unsynced: Vec<u8>,
    journal_ops: usize,
    pub capacity: usize,
}

const JOURNAL: &str = "retry.journal";

impl RetryStore {
    pub fn open(dir: &Path, capacity: usize) -> io::Result<RetryStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOURNAL);
        let mut entries = BTreeMap::new();
        let mut ops = 0;
        if path.exists() {
            for line in BufReader::new(File::open(&path)?).lines() {
                let line = line?;
                // A torn last line (crash inside a write) is not an operation.
                let Ok(op) = serde_json::from_str::<Op>(&line) else {
                    continue;
                };
                ops += 1;
                apply(&mut entries, op);
            }
        }
        let mut by_key: HashMap<String, VecDeque<u64>> = HashMap::new();
        for (id, h) in &entries {
            by_key.entry(h.key.clone()).or_default().push_back(*id);
        }
        let next_id = entries.keys().next_back().map_or(1, |id| id + 1);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut store = RetryStore {
            dir: dir.to_owned(),
            file,
            entries,
            by_key,
            next_id,
            unsynced: Vec::new(),
            journal_ops: ops,
            capacity,
        };
        if store.journal_ops > 2 * store.entries.len() + 1000 {
            store.compact()?;
        }
        Ok(store)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Full: the destination stops reading new events until entries drain.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Whether `key` has events held: its new events must queue behind them.
    pub fn is_blocked(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    fn log(&mut self, op: &Op) {
        if let Ok(line) = serde_json::to_vec(op) {
            self.unsynced.extend_from_slice(&line);
            self.unsynced.push(b'\n');
            self.journal_ops += 1;
        }
    }

    /// Holds an event at the end of its key's queue.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        &mut self,
        key: &str,
        source: &str,
        log_offset: u64,
        event: serde_json::Value,
        attempts: u32,
        first_failed_ms: i64,
        next_at_ms: i64,
        last_error: &str,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let held = Held {
            id,
            key: key.to_owned(),
            source: source.to_owned(),
            log_offset,
            event,
            attempts,
            first_failed_ms,
            next_at_ms,
            last_error: last_error.to_owned(),
        };
        self.log(&Op::Put(held.clone()));
        self.by_key
            .entry(held.key.clone())
            .or_default()
            .push_back(id);
        self.entries.insert(id, held);
        id
    }

    /// Records a failed attempt of an entry.
    pub fn update(
        &mut self,
        id: u64,
        attempts: u32,
        first_failed_ms: i64,
        next_at_ms: i64,
        error: &str,
    ) {
        if let Some(h) = self.entries.get_mut(&id) {
            h.attempts = attempts;
            h.first_failed_ms = first_failed_ms;
            h.next_at_ms = next_at_ms;
            h.last_error = error.to_owned();
            let op = Op::Update {
                id,
                attempts,
                first_failed_ms,
                next_at_ms,
                last_error: error.to_owned(),
            };
            self.log(&op);
        }
    }

    /// Forgets an entry (delivered, or dead-lettered).
    pub fn remove(&mut self, id: u64) {
        if let Some(h) = self.entries.remove(&id) {
            if let Some(q) = self.by_key.get_mut(&h.key) {
                q.retain(|x| *x != id);
                if q.is_empty() {
                    self.by_key.remove(&h.key);
                }
            }
            self.log(&Op::Remove { id });
        }
    }

    /// For every key whose first entry is due: that entry and the untried ones right behind it,
    /// up to `per_key`, in order.
    pub fn due(&self, now_ms: i64, per_key: usize) -> Vec<Vec<Held>> {
        let mut out = Vec::new();
        for q in self.by_key.values() {
            let Some(head) = q.front().and_then(|id| self.entries.get(id)) else {
                continue;
            };
            if head.next_at_ms > now_ms {
                continue;
            }
            let mut run = vec![head.clone()];
            for id in q.iter().skip(1) {
                match self.entries.get(id) {
                    Some(h) if h.attempts == 0 && run.len() < per_key => run.push(h.clone()),
                    _ => break,
                }
            }
            out.push(run);
        }
        // Oldest first, so a long backlog drains in the order it formed.
        out.sort_by_key(|run| run[0].id);
        out
    }

    /// The earliest time an entry becomes due.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.by_key
            .values()
            .filter_map(|q| q.front().and_then(|id| self.entries.get(id)))
            .map(|h| h.next_at_ms)
            .min()
    }

    /// Makes every change so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.unsynced)?;
        self.file.sync_data()?;
        self.unsynced.clear();
        if self.journal_ops > 4 * self.entries.len() + 10_000 {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the journal with only the live entries (temp file, fsync, rename, dir fsync).
    fn compact(&mut self) -> io::Result<()> {
        let path = self.dir.join(JOURNAL);
        let tmp = self.dir.join(format!("{JOURNAL}.tmp"));
        let mut out = Vec::new();
        for h in self.entries.values() {
            if let Ok(line) = serde_json::to_vec(&Op::Put(h.clone())) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.journal_ops = self.entries.len();
        Ok(())
    }
}

fn apply(entries: &mut BTreeMap<u64, Held>, op: Op) {
    match op {
        Op::Put(h) => {
            entries.insert(h.id, h);
        }
        Op::Update {
            id,
            attempts,
            first_failed_ms,
            next_at_ms,
            last_error,
        } => {
            if let Some(h) = entries.get_mut(&id) {
                h.attempts = attempts;
                h.first_failed_ms = first_failed_ms;
                h.next_at_ms = next_at_ms;
                h.last_error = last_error;
            }
        }
        Op::Remove { id } => {
            entries.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_survive_reopen_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RetryStore::open(dir.path(), 100).unwrap();
        let a1 = s.hold("a", "web", 1, json!({"n": 1}), 1, 10, 100, "500");
        s.hold("a", "web", 2, json!({"n": 2}), 0, 0, 0, "");
        let b1 = s.hold("b", "web", 3, json!({"n": 3}), 0, 0, 0, "");
        s.update(a1, 2, 10, 50, "503");
        s.remove(b1);
        s.sync().unwrap();
        drop(s);
        // A torn line at the end is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"{\"op\":\"put\",\"id\":9").unwrap();
        let s = RetryStore::open(dir.path(), 100).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.is_blocked("a") && !s.is_blocked("b"));
        assert!(s.due(49, 10).is_empty(), "not due before next_at");
        let due = s.due(50, 10);
        assert_eq!(due.len(), 1);
        let ns: Vec<i64> = due[0]
            .iter()
            .map(|h| h.event["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [1, 2]);
        assert_eq!(due[0][0].attempts, 2);
    }
}
