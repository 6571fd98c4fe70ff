//! weir: an event router for Segment/RudderStack-spec analytics events with WebAssembly plugins.
//!
//! Data flows one way: [`gateway`] (HTTP ingest) → [`log`] (durable, acknowledged after fsync)
//! → pipeline → delivery / warehouse. [`app`] wires the parts and owns shutdown.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod delivery;
pub mod dlq;
pub mod event;
pub mod gateway;
pub mod ids;
pub mod log;
pub mod pipeline;
pub mod plugin;
pub mod server;
pub mod telemetry;
pub mod timestamp;
pub mod warehouse;
