//! Typed identifiers used across the router, so a source name is never confused with a write key
//! or a log offset with a byte count.

use std::fmt;
use std::sync::Arc;

/// Name of a source as written in `weir.toml` (`[[sources]] name = "web"`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(Arc<str>);

impl SourceId {
    pub fn new(name: &str) -> Self {
        SourceId(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceId({})", self.0)
    }
}

/// A secret that authenticates an SDK as a source. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WriteKey(Arc<str>);

impl WriteKey {
    pub fn new(key: &str) -> Self {
        WriteKey(Arc::from(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random key of 32 URL-safe characters.
    pub fn generate() -> Self {
        WriteKey::new(&random_token(32))
    }
}

impl fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteKey(***)")
    }
}

/// Position of a record in a log: the first record ever written has offset 0 and every record
/// gets the next number. Offsets are never reused, even after segments are deleted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Offset(pub u64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Name of a log consumer (`pipeline`, `dedupe`, `destination:amplitude`...). Each consumer keeps
/// its own committed offset; a segment is deleted only when every configured consumer is past it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ConsumerId(Arc<str>);

impl ConsumerId {
    pub fn new(name: &str) -> Self {
        ConsumerId(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a file name: anything but `[A-Za-z0-9_.-]` becomes `_`.
    pub fn file_stem(&self) -> String {
        self.0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random string of `len` characters from `[A-Za-z0-9]`.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
