//! What a plugin instance's store holds, and the host functions a plugin may call.
//!
//! Capabilities are deny-by-default: the WASI context inherits nothing (no files, network,
//! environment, arguments); it is linked only because guests built with `std` import `wasi:cli`
//! and friends. A plugin's stdout and stderr become log lines attributed to plugin and version.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Host;
use super::bindings::types::{Label, Level};
use super::instance::MemoryLimit;
use crate::telemetry::PluginMetrics;
use crate::timestamp;

/// Who is running, for log lines and metrics.
pub struct PluginContext {
    pub plugin: String,
    pub version: String,
    pub metrics: Arc<PluginMetrics>,
}

/// The data of one plugin instance's store.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: MemoryLimit,
    pub ctx: Arc<PluginContext>,
    /// The last lines the instance wrote to stderr: a Rust panic message lands there, and a
    /// dead-letter entry should say more than "unreachable executed".
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of stderr kept per instance for error messages.
const STDERR_TAIL: usize = 4;

impl State {
    pub fn new(ctx: Arc<PluginContext>, limits: MemoryLimit) -> State {
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let wasi = WasiCtx::builder()
            .stdout(PluginOutput {
                ctx: ctx.clone(),
                stream: "stdout",
                tail: None,
            })
            .stderr(PluginOutput {
                ctx: ctx.clone(),
                stream: "stderr",
                tail: Some(stderr_tail.clone()),
            })
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limits,
            ctx,
            stderr_tail,
        }
    }

    /// What the instance wrote to stderr since the last call to this, as one line.
    pub fn take_stderr(&self) -> Option<String> {
        let mut tail = self.stderr_tail.lock();
        let text = tail.drain(..).collect::<Vec<_>>().join(" / ");
        (!text.is_empty()).then_some(text)
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for State {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, version) = (&self.ctx.plugin, &self.ctx.version);
        match level {
            Level::Trace => tracing::trace!(plugin, version, "{message}"),
            Level::Debug => tracing::debug!(plugin, version, "{message}"),
            Level::Info => tracing::info!(plugin, version, "{message}"),
            Level::Warn => tracing::warn!(plugin, version, "{message}"),
            Level::Error => tracing::error!(plugin, version, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        timestamp::now_ms().max(0) as u64
    }

    fn count(&mut self, name: String, labels: Vec<Label>, delta: u64) {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        self.ctx
            .metrics
            .count(&self.ctx.plugin, &self.ctx.version, &name, labels, delta);
    }
}

/// A plugin's stdout or stderr: complete lines go to the log.
struct PluginOutput {
    ctx: Arc<PluginContext>,
    stream: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            ctx: self.ctx.clone(),
            stream: self.stream,
            buf: Vec::new(),
            tail: self.tail.clone(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp2 guests are supported; p3 output is discarded.
        Box::new(tokio::io::sink())
    }
}

/// Longest line kept; the rest of an endless line is dropped.
const MAX_LINE: usize = 4096;

struct LineWriter {
    ctx: Arc<PluginContext>,
    stream: &'static str,
    buf: Vec<u8>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        tracing::info!(
            plugin = %self.ctx.plugin,
            version = %self.ctx.version,
            stream = self.stream,
            "{text}"
        );
        if let Some(tail) = &self.tail
            && !text.trim().is_empty()
        {
            let mut tail = tail.lock();
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(text.to_owned());
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.emit(&rest);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            if let Some(line) = chunk.strip_suffix(b"\n") {
                if self.buf.len() < MAX_LINE {
                    let room = MAX_LINE - self.buf.len();
                    self.buf.extend_from_slice(&line[..line.len().min(room)]);
                }
                let full = std::mem::take(&mut self.buf);
                self.emit(&full);
            } else if self.buf.len() < MAX_LINE {
                let room = MAX_LINE - self.buf.len();
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}
