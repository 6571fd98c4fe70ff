//! Committed consumer offsets.
//!
//! Each consumer's offset lives in its own small file, replaced atomically (temp file, fsync,
//! rename, directory fsync): after a crash it holds the last committed value, never a torn one.
//! The committed offset is the next offset the consumer will read: everything below it is done.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::storage::{self, Storage};
use super::{LogError, io_err};
use crate::ids::{ConsumerId, Offset};

#[derive(Serialize, Deserialize)]
struct OffsetFile {
    consumer: String,
    next: u64,
}

/// The offsets of every consumer of one log.
pub struct OffsetStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    cache: Mutex<HashMap<ConsumerId, Offset>>,
}

impl OffsetStore {
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<OffsetStore, LogError> {
        storage
            .create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        Ok(OffsetStore {
            storage,
            dir: dir.to_owned(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Opens without creating anything (for tools that only read).
    pub fn open_read_only(storage: Arc<dyn Storage>, dir: &Path) -> OffsetStore {
        OffsetStore {
            storage,
            dir: dir.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, consumer: &ConsumerId) -> PathBuf {
        self.dir.join(format!("{}.json", consumer.file_stem()))
    }

    /// The committed offset of `consumer`, or `None` if it never committed.
    pub fn load(&self, consumer: &ConsumerId) -> Result<Option<Offset>, LogError> {
        if let Some(o) = self.cache.lock().get(consumer) {
            return Ok(Some(*o));
        }
        let path = self.path(consumer);
        if !self.storage.exists(&path) {
            return Ok(None);
        }
        let bytes =
            storage::read_all(self.storage.as_ref(), &path).map_err(io_err("read", &path))?;
        let file: OffsetFile = serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
            offset: Offset(0),
            path: path.clone(),
            reason: format!("offset file is not valid: {e}"),
        })?;
        let offset = Offset(file.next);
        self.cache.lock().insert(consumer.clone(), offset);
        Ok(Some(offset))
    }

    /// Durably records that `consumer` is done with every offset below `next`.
    pub fn commit(&self, consumer: &ConsumerId, next: Offset) -> Result<(), LogError> {
        let path = self.path(consumer);
        let body = serde_json::to_vec(&OffsetFile {
            consumer: consumer.as_str().to_owned(),
            next: next.0,
        })
        .unwrap_or_default();
        storage::write_atomic(self.storage.as_ref(), &path, &body)
            .map_err(io_err("commit offset to", &path))?;
        self.cache.lock().insert(consumer.clone(), next);
        Ok(())
    }

    /// Forgets a consumer that was removed from the config, so it holds no segments.
    pub fn remove(&self, consumer: &ConsumerId) -> Result<(), LogError> {
        let path = self.path(consumer);
        self.cache.lock().remove(consumer);
        if self.storage.exists(&path) {
            self.storage
                .remove(&path)
                .map_err(io_err("remove", &path))?;
            self.storage
                .sync_dir(&self.dir)
                .map_err(io_err("sync directory", &self.dir))?;
        }
        Ok(())
    }

    /// Names of every consumer with a committed offset on disk.
    pub fn consumers(&self) -> Result<Vec<ConsumerId>, LogError> {
        let mut out = Vec::new();
        for name in self
            .storage
            .list(&self.dir)
            .map_err(io_err("list", &self.dir))?
        {
            let Some(_stem) = name.strip_suffix(".json") else {
                continue;
            };
            let path = self.dir.join(&name);
            let bytes =
                storage::read_all(self.storage.as_ref(), &path).map_err(io_err("read", &path))?;
            if let Ok(file) = serde_json::from_slice::<OffsetFile>(&bytes) {
                out.push(ConsumerId::new(&file.consumer));
            }
        }
        Ok(out)
    }

    /// The lowest committed offset among `consumers` (a consumer that never committed counts
    /// as 0): every segment below it may be deleted.
    pub fn low_water_mark(&self, consumers: &[ConsumerId]) -> Result<Offset, LogError> {
        let mut low: Option<Offset> = None;
        for c in consumers {
            let o = self.load(c)?.unwrap_or(Offset(0));
            low = Some(low.map_or(o, |l| l.min(o)));
        }
        // With no consumer nothing is known to be read: keep everything.
        Ok(low.unwrap_or(Offset(0)))
    }
}
