//! The ids each table already holds, kept in memory as 64-bit hashes, for engines with no index
//! to look a batch's ids up in (DuckDB: see `duckdb.rs`).
//!
//! Without it, deduplicating a load means scanning a table's whole `id` column: ~100 ns per
//! row on one core here, so a load into a table of 20 million rows spent 2 s on it, and loads
//! slowed down as the warehouse grew. With it, a load hashes its ids and looks them up here:
//! an id whose hash is absent is certainly new. Only ids whose hash is present (a real repeat,
//! or a hash collision) are checked against the table, by the engine, exactly.
//!
//! A table's set is filled from the table the first time a session loads into it, and grows
//! with what each committed load wrote (`Pending`, applied only after the commit, so a load
//! that rolls back leaves no trace here). It costs 10-21 bytes per row in memory. It assumes
//! weir is the only one adding rows with ids to its tables: a row someone inserts by hand
//! while the router runs is not known until the next session (a restart or a failed load).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use foldhash::fast::FixedState;

/// Same seed in every process: nothing hashed here leaves the process, but a fixed hasher
/// keeps runs reproducible.
const SEED: u64 = 0x7765_6972_5f69_6473;

#[derive(Default)]
pub struct LoadedIds {
    tables: HashMap<String, HashSet<u64, FixedState>>,
}

/// Ids a load wrote, to be added once its transaction has committed.
#[derive(Default)]
pub struct Pending(Vec<(String, Vec<u64>)>);

impl Pending {
    /// `table` (the key the load used) gained `ids`.
    pub fn wrote<'a>(&mut self, table: &str, ids: impl IntoIterator<Item = &'a str>) {
        self.0
            .push((table.to_owned(), ids.into_iter().map(hash).collect()));
    }
}

fn hash(id: &str) -> u64 {
    FixedState::with_seed(SEED).hash_one(id)
}

impl LoadedIds {
    /// Whether `table`'s set is filled (else fill it with `fill` before asking `candidates`).
    pub fn knows(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// Fills `table`'s set with the ids `read` reports. Nothing changes if `read` fails: a
    /// set that missed ids would let repeats of them in.
    pub fn fill<E>(
        &mut self,
        table: &str,
        read: impl FnOnce(&mut dyn FnMut(&str)) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut set = HashSet::default();
        read(&mut |id| {
            set.insert(hash(id));
        })?;
        self.tables.insert(table.to_owned(), set);
        Ok(())
    }

    /// The `ids` that may already be in `table`: every other one certainly is not. All of them
    /// when the table's set is not filled.
    pub fn candidates<'a>(
        &self,
        table: &str,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a str> {
        match self.tables.get(table) {
            Some(set) => ids
                .into_iter()
                .filter(|id| set.contains(&hash(id)))
                .collect(),
            None => ids.into_iter().collect(),
        }
    }

    /// Adds what a committed load wrote.
    pub fn commit(&mut self, pending: Pending) {
        for (table, ids) in pending.0 {
            self.tables.entry(table).or_default().extend(ids);
        }
    }

    /// Forgets every table: the next session fills them again from the warehouse.
    pub fn clear(&mut self) {
        self.tables.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_seen_before_are_candidates() {
        let mut ids = LoadedIds::default();
        assert!(!ids.knows("t"));
        assert_eq!(
            ids.candidates("t", ["a", "b"]),
            ["a", "b"],
            "unknown table: all"
        );
        ids.fill("t", |put| {
            put("a");
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(ids.fill("t", |_| Err(())).is_err());
        assert!(ids.knows("t"));
        assert_eq!(ids.candidates("t", ["a", "b"]), ["a"]);
        let mut pending = Pending::default();
        pending.wrote("t", ["b"]);
        assert_eq!(
            ids.candidates("t", ["b"]),
            Vec::<&str>::new(),
            "not committed yet"
        );
        ids.commit(pending);
        assert_eq!(ids.candidates("t", ["a", "b", "c"]), ["a", "b"]);
        ids.clear();
        assert!(!ids.knows("t"));
    }
}
