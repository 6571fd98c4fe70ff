//! A fault-injecting, in-memory [`Storage`] for durability tests.
//!
//! It keeps, for every file, the bytes written and the prefix made durable by `sync`, and for
//! every directory the entries made durable by `sync_dir`. [`SimStorage::power_cut`] returns the
//! storage as a machine would find it after losing power: unsynced appends gone, unsynced
//! creations, renames and removals undone. From that moment the old storage fails every call, as
//! a dead machine would. A SIGKILL test cannot catch a missing fsync (the kernel keeps the page
//! cache); this can.
//!
//! It can also hold every `sync` until released, to prove no ack is sent before its fsync, and
//! cap the space to simulate a full disk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::storage::{AppendFile, ReadFile, Storage};

type FileId = u64;

#[derive(Default, Clone)]
struct SimFile {
    data: Vec<u8>,
    durable_len: usize,
}

#[derive(Default)]
struct State {
    dead: bool,
    next_id: FileId,
    files: HashMap<FileId, SimFile>,
    entries: BTreeMap<PathBuf, FileId>,
    durable_entries: BTreeMap<PathBuf, FileId>,
    capacity: Option<u64>,
    syncs: u64,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            Err(io::Error::other("simulated power cut: the machine is off"))
        } else {
            Ok(())
        }
    }

    fn used(&self) -> u64 {
        self.files.values().map(|f| f.data.len() as u64).sum()
    }

    fn lookup(&self, path: &Path) -> io::Result<FileId> {
        self.entries
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn collect_garbage(&mut self) {
        let live: std::collections::HashSet<FileId> = self
            .entries
            .values()
            .chain(self.durable_entries.values())
            .copied()
            .collect();
        self.files.retain(|id, _| live.contains(id));
    }
}

#[derive(Default)]
struct Gate {
    held: bool,
    waiting: usize,
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimStorage")
    }
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts the power: this storage fails from now on; the returned one holds what was durable.
    pub fn power_cut(&self) -> SimStorage {
        let mut st = self.state.lock();
        st.dead = true;
        let mut files = HashMap::new();
        for id in st.durable_entries.values() {
            if let Some(f) = st.files.get(id) {
                let data = f.data[..f.durable_len].to_vec();
                let durable_len = data.len();
                files.insert(*id, SimFile { data, durable_len });
            }
        }
        let survivor = State {
            dead: false,
            next_id: st.next_id,
            files,
            entries: st.durable_entries.clone(),
            durable_entries: st.durable_entries.clone(),
            capacity: st.capacity,
            syncs: 0,
        };
        drop(st);
        // Wake syncs held at the gate so the dead machine's threads can fail and exit.
        self.release_syncs();
        SimStorage {
            state: Arc::new(Mutex::new(survivor)),
            gate: Arc::default(),
        }
    }

    /// Makes every `sync` wait until [`release_syncs`](Self::release_syncs).
    pub fn hold_syncs(&self) {
        self.gate.0.lock().held = true;
    }

    pub fn release_syncs(&self) {
        self.gate.0.lock().held = false;
        self.gate.1.notify_all();
    }

    /// How many `sync` calls are waiting at the gate.
    pub fn syncs_waiting(&self) -> usize {
        self.gate.0.lock().waiting
    }

    /// How many `sync` calls completed.
    pub fn syncs_done(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Limits the total bytes of all files: an append beyond fails with `ENOSPC`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// Cuts a file to `len` bytes, durably (a test's way of tearing a segment's tail).
    pub fn tear(&self, path: &Path, len: usize) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = st.lookup(path)?;
        if let Some(f) = st.files.get_mut(&id) {
            f.data.truncate(len);
            f.durable_len = f.durable_len.min(len);
        }
        Ok(())
    }

    fn wait_at_gate(&self) {
        let (lock, cv) = &*self.gate;
        let mut g = lock.lock();
        if g.held {
            g.waiting += 1;
            while g.held {
                cv.wait(&mut g);
            }
            g.waiting -= 1;
        }
    }
}

struct SimAppend {
    storage: SimStorage,
    id: FileId,
}

impl AppendFile for SimAppend {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.storage.state.lock();
        st.check_alive()?;
        if let Some(cap) = st.capacity
            && st.used() + buf.len() as u64 > cap
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        st.files
            .entry(self.id)
            .or_default()
            .data
            .extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.storage.wait_at_gate();
        let mut st = self.storage.state.lock();
        st.check_alive()?;
        let f = st.files.entry(self.id).or_default();
        f.durable_len = f.data.len();
        st.syncs += 1;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.storage.state.lock();
        st.check_alive()?;
        let f = st.files.entry(self.id).or_default();
        f.data.truncate(len as usize);
        f.durable_len = f.durable_len.min(len as usize);
        Ok(())
    }

    fn len(&self) -> u64 {
        let st = self.storage.state.lock();
        st.files.get(&self.id).map_or(0, |f| f.data.len() as u64)
    }
}

struct SimRead {
    storage: SimStorage,
    id: FileId,
}

impl ReadFile for SimRead {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let st = self.storage.state.lock();
        st.check_alive()?;
        let data = st.files.get(&self.id).map_or(&[][..], |f| &f.data[..]);
        let pos = (pos as usize).min(data.len());
        let n = buf.len().min(data.len() - pos);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        let st = self.storage.state.lock();
        st.check_alive()?;
        Ok(st.files.get(&self.id).map_or(0, |f| f.data.len() as u64))
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: a path's parent exists once anything lives in it.
        self.state.lock().check_alive()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        st.check_alive()?;
        Ok(st
            .entries
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut st = self.state.lock();
        st.check_alive()?;
        let id = st.next_id;
        st.next_id += 1;
        st.files.insert(id, SimFile::default());
        st.entries.insert(path.to_owned(), id);
        Ok(Box::new(SimAppend {
            storage: self.clone(),
            id,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let st = self.state.lock();
        st.check_alive()?;
        let id = st.lookup(path)?;
        Ok(Box::new(SimAppend {
            storage: self.clone(),
            id,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let st = self.state.lock();
        st.check_alive()?;
        let id = st.lookup(path)?;
        Ok(Box::new(SimRead {
            storage: self.clone(),
            id,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.check_alive()?;
        st.lookup(path)?;
        st.entries.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.check_alive()?;
        let id = st.lookup(from)?;
        st.entries.remove(from);
        st.entries.insert(to.to_owned(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.check_alive()?;
        st.durable_entries.retain(|p, _| p.parent() != Some(dir));
        let current: Vec<(PathBuf, FileId)> = st
            .entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable_entries.extend(current);
        st.collect_garbage();
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.state.lock();
        !st.dead && st.entries.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::{read_all, write_atomic};

    #[test]
    fn unsynced_data_and_entries_are_lost() {
        let s = SimStorage::new();
        let dir = Path::new("/d");
        let a = dir.join("a");
        let mut f = s.create(&a).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        s.sync_dir(dir).unwrap();
        f.append(b" world").unwrap();
        let b = dir.join("b");
        s.create(&b).unwrap().sync().unwrap();
        let after = s.power_cut();
        assert!(f.append(b"x").is_err(), "the dead machine refuses writes");
        assert_eq!(read_all(&after, &a).unwrap(), b"hello");
        assert!(
            !after.exists(&b),
            "an entry never synced in its directory is gone"
        );
    }

    #[test]
    fn atomic_write_survives_whole_or_not_at_all() {
        let s = SimStorage::new();
        let p = Path::new("/d/offset");
        write_atomic(&s, p, b"1").unwrap();
        write_atomic(&s, p, b"2").unwrap();
        let after = s.power_cut();
        assert_eq!(read_all(&after, p).unwrap(), b"2");
    }

    #[test]
    fn full_disk_fails_the_append() {
        let s = SimStorage::new();
        s.set_capacity(Some(4));
        let mut f = s.create(Path::new("/d/x")).unwrap();
        let err = f.append(b"too long").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
}
