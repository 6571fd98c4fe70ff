//! The file operations the log needs, behind a trait so tests can replace the disk with one that
//! forgets unsynced writes at a simulated power cut ([`super::sim::SimStorage`]).
//!
//! The contract is the POSIX one the log's durability argument rests on: data appended to a file
//! survives a power cut only once `sync` returned; a created, renamed or removed directory entry
//! only once `sync_dir` on its directory returned.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A directory tree the log keeps its files in.
pub trait Storage: Send + Sync + Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path` empty (truncating it if it exists) for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Renames `spare` (a finished file nobody reads any more) to `path` and opens it for
    /// appending from its start: [`AppendFile::len`] is 0, and where the storage can, the
    /// appends overwrite the old bytes in blocks the file already has instead of growing it
    /// (the old bytes past `len` are not data). By default, a new empty file.
    fn reuse(&self, spare: &Path, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.rename(spare, path)?;
        self.create(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
}

/// A file being appended to.
pub trait AppendFile: Send {
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (used to drop a torn tail or a failed write).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// From now on, grow the file `chunk` bytes of zeros at a time ahead of the appends while
    /// syncs are small, so that an append and its `sync` write data into blocks the file
    /// already has and leave its size alone. Where the size changes, `fdatasync` must also
    /// commit the file system's journal; where it does not, it only writes the data: ~95 µs
    /// instead of ~150 µs per small sync on this machine's ext4. The zeros cost a copy of
    /// `chunk` bytes, which pays for itself only with many syncs per chunk: when syncs carry
    /// more than `chunk / 16` bytes on average (large batches under load), the file grows by
    /// its appends instead. `len` stays the bytes appended; the zeros past it are not data
    /// (recovery stops at them, see `segment::scan`). A no-op where the storage has no use
    /// for it.
    fn preallocate(&mut self, chunk: u64) {
        let _ = chunk;
    }
    /// Gives back the zeros past `len` and makes that durable: for a file that is finished.
    fn trim(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file being read at arbitrary positions.
pub trait ReadFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    fn size(&self) -> io::Result<u64>;
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, directory fsync.
/// After a crash the file holds either the old or the new contents, never a mix.
pub fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = storage.create(&tmp)?;
    f.append(bytes)?;
    f.sync()?;
    drop(f);
    storage.rename(&tmp, path)?;
    storage.sync_dir(dir)
}

/// Reads a whole file.
pub fn read_all(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let f = storage.open_read(path)?;
    let len = f.size()? as usize;
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

/// A file appended to with positioned writes (`pwrite`), so that appends can go into zeros
/// written ahead of them (see [`AppendFile::preallocate`]).
struct FsAppend {
    file: File,
    /// Bytes appended.
    len: u64,
    /// The file's size: `len` plus the zeros written ahead.
    size: u64,
    /// How far ahead zeros are written; 0: not at all.
    chunk: u64,
    /// Bytes appended since the last sync.
    unsynced: u64,
    /// Moving average of the bytes each sync made durable.
    per_sync: u64,
}

/// Zeros written ahead this many bytes per `write`.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl FsAppend {
    fn new(file: File, len: u64) -> Self {
        FsAppend {
            file,
            len,
            size: len,
            chunk: 0,
            unsynced: 0,
            per_sync: 0,
        }
    }

    /// Whether zeros ahead are worth their copy at the current size of syncs.
    fn writes_ahead(&self) -> bool {
        self.chunk > 0 && self.per_sync <= self.chunk / 16
    }

    /// Grows the file with zeros to a multiple of `chunk` covering `end`.
    fn grow(&mut self, end: u64) -> io::Result<()> {
        let target = end.div_ceil(self.chunk) * self.chunk;
        let mut at = self.size;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.size = target;
        Ok(())
    }

    /// After a failed write: the file ends where the appended bytes end, with nothing of the
    /// failed write (which could otherwise be read back as records after a crash) and no zeros.
    fn cut_back(&mut self) {
        let _ = self.file.set_len(self.len);
        self.size = self.len;
    }
}

impl AppendFile for FsAppend {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let end = self.len + buf.len() as u64;
        let written = if end > self.size && self.writes_ahead() {
            self.grow(end)
        } else {
            Ok(())
        }
        .and_then(|()| self.file.write_all_at(buf, self.len));
        match written {
            Ok(()) => {
                self.len = end;
                self.size = self.size.max(end);
                self.unsynced += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A short write leaves part of `buf` in the file; cut it so the file never
                // holds half a frame that a later write would follow.
                self.cut_back();
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        // An average over the last ~8 syncs.
        self.per_sync = (self.per_sync * 7 + self.unsynced) / 8;
        self.unsynced = 0;
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        self.size = len;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn preallocate(&mut self, chunk: u64) {
        self.chunk = chunk;
    }

    fn trim(&mut self) -> io::Result<()> {
        if self.size > self.len {
            self.file.set_len(self.len)?;
            self.size = self.len;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

struct FsRead(File);

impl ReadFile for FsRead {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(FsAppend::new(file, 0)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        // Not `O_APPEND`: Linux's `pwrite` ignores the position on such a file.
        let file = OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsAppend::new(file, len)))
    }

    fn reuse(&self, spare: &Path, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        fs::rename(spare, path)?;
        let file = OpenOptions::new().write(true).open(path)?;
        let size = file.metadata()?.len();
        let mut reused = FsAppend::new(file, 0);
        reused.size = size;
        Ok(Box::new(reused))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(FsRead(File::open(path)?)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
