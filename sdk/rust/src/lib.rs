//! Write weir plugins in Rust.
//!
//! A weir plugin is a WebAssembly component that the router runs on Segment/RudderStack-spec
//! events. This crate hides the component model: you implement a trait on plain Rust types and
//! export it with one macro.
//!
//! ```
//! use weir_plugin::{Event, InitError, Outcome, Plugin, Transform};
//!
//! #[derive(serde::Deserialize)]
//! pub struct Config {
//!     /// Events with this name are dropped.
//!     drop_event: String,
//! }
//!
//! pub struct DropOne {
//!     config: Config,
//! }
//!
//! impl Plugin for DropOne {
//!     type Config = Config;
//!     fn init(config: Config) -> Result<Self, InitError> {
//!         Ok(DropOne { config })
//!     }
//! }
//!
//! impl Transform for DropOne {
//!     fn transform(&mut self, mut event: Event) -> Outcome {
//!         if event.event_name() == Some(self.config.drop_event.as_str()) {
//!             return Outcome::Drop(format!("`{}` is not wanted", self.config.drop_event));
//!         }
//!         match event.set("context.plugin", "drop-one") {
//!             Ok(_) => Outcome::Keep(event),
//!             Err(e) => Outcome::Fail(e.to_string()),
//!         }
//!     }
//! }
//!
//! weir_plugin::export_transform!(DropOne);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! `.wasm` file is the component. Compiled natively the same crate is ordinary Rust: unit tests
//! and benches call the trait methods directly, and the `testing` module (native only) runs
//! fixture files.
//!
//! The pieces:
//!
//! - [`Event`]: the parsed JSON object with dotted-path access, plus source and offset;
//! - [`Outcome`]: keep, drop, fail or expand (fan out);
//! - [`Plugin`] (typed config, `init`) and one of [`Transform`], [`Filter`], [`Destination`];
//! - [`export_transform!`], [`export_filter!`], [`export_destination!`];
//! - host functions: [`log()`] (and [`info!`], [`warn!`]...), [`now_ms`], [`count`];
//! - [`date`]: event timestamps and HTTP dates as milliseconds since the epoch;
//! - [`raw`]: the byte-level batch, for benches and the rare plugin that wants the bytes.
//!
//! Robustness the SDK provides, so plugins need not: an event whose payload is not a JSON
//! object becomes a `fail` outcome for that event (never a trap); calls before `init`, or after
//! a failed `init`, return `fail` outcomes; a config that does not deserialize makes `init`
//! fail with the offending field named.

pub mod date;
mod destination;
mod event;
mod export;
mod host;
mod outcome;
mod path;
mod plugin;
pub mod raw;
pub mod spec;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
mod glue;

pub use destination::{
    BuildOutput, Destination, EventVerdict, Header, Rejection, Request, Response, Verdict,
    classify_by_status,
};
pub use event::{Event, EventError, json_eq};
pub use host::{Level, count, log, now_ms};
pub use outcome::Outcome;
pub use path::PathError;
pub use plugin::{Filter, InitError, NoConfig, Plugin, Transform, init_from_json};

/// Re-exported for plugins' configs and events.
pub use serde_json;

/// Used by the export macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::glue::{
        Instance, WitBuildOutput, WitEvent, WitOutcome, WitRequest, WitResponse, WitVerdict,
        bindings, build, classify, filter, transform, wit_bindgen,
    };

    /// Compile-time check behind `export_transform!`.
    pub const fn assert_transform<T: crate::Transform>() {}
    /// Compile-time check behind `export_filter!`.
    pub const fn assert_filter<T: crate::Filter>() {}
    /// Compile-time check behind `export_destination!`.
    pub const fn assert_destination<T: crate::Destination>() {}
}
