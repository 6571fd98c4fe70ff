//! What the host offers a plugin: a log line, the clock, a counter.
//!
//! In a component these call the `weir:plugin/host` imports. Compiled natively (unit tests,
//! benches) there is no host: [`log`] and [`count`] do nothing and [`now_ms`] reads the system
//! clock, so the same plugin code runs unchanged.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a line to the router's log, attributed to the plugin and its version.
///
/// The [`info!`](crate::info), [`warn!`](crate::warn) etc. macros format and call this.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::glue::bindings::weir::plugin::{host, types};
        let level = match level {
            Level::Trace => types::Level::Trace,
            Level::Debug => types::Level::Debug,
            Level::Info => types::Level::Info,
            Level::Warn => types::Level::Warn,
            Level::Error => types::Level::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Milliseconds since the Unix epoch, from the host's clock (the only clock a plugin has).
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        crate::glue::bindings::weir::plugin::host::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Adds `delta` to the counter `name`, exported by the host as `weir_plugin_<name>_total` with
/// the plugin, its version and `labels` as labels.
///
/// Keep label values few (a config key, an event type), never user data: the host caps the
/// number of label sets per plugin and folds the rest into `other`.
pub fn count(name: &str, labels: &[(&str, &str)], delta: u64) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::glue::bindings::weir::plugin::{host, types};
        let labels: Vec<types::Label> = labels
            .iter()
            .map(|(name, value)| types::Label {
                name: (*name).to_owned(),
                value: (*value).to_owned(),
            })
            .collect();
        host::count(name, &labels, delta);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (name, labels, delta);
}

/// Formats and logs a line at a [`Level`]: `log!(Level::Info, "kept {n} events")`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log($level, &::std::format!($($arg)+))
    };
}

/// Formats and logs a line at [`Level::Trace`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Trace, $($arg)+) };
}

/// Formats and logs a line at [`Level::Debug`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Debug, $($arg)+) };
}

/// Formats and logs a line at [`Level::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Info, $($arg)+) };
}

/// Formats and logs a line at [`Level::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Warn, $($arg)+) };
}

/// Formats and logs a line at [`Level::Error`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Error, $($arg)+) };
}
