//! Ingest throughput and ack latency of `weir serve`, each figure next to the baseline that
//! bounds it (STYLE.md: performance is a ratio to a baseline measured in the same run):
//!
//! - HTTP and JSON: a bare hyper server (a child process of this bench, like weir) that parses
//!   the body with serde_json, counts the events and answers 200 without storing anything;
//! - durability: the disk's sequential write + `fdatasync` bandwidth, in chunks the size of one
//!   batch request as the log stores it, measured appending to new files and overwriting a file
//!   written beforehand (no size change, so no file-system journal commit per sync); the faster
//!   is the baseline.
//!
//! The load generator runs in this process: 64 keep-alive HTTP/1.1 connections (hyper 1), each
//! sending requests back to back, every event with a messageId never used before in the run.
//! Only 200s count, and for weir only events found afterwards in its logs (raw, or processed
//! once retention dropped the raw segment) count as throughput; every 200-acknowledged event
//! must be there, or the bench fails.
//!
//! `cargo bench -p weir --bench ingest`. Environment:
//! - `WEIR_BENCH_SECS`: seconds per measurement (default 8);
//! - `WEIR_BENCH_DIR`: where the temp data dirs go (default: cargo's target/tmp, on the disk
//!   the project is on; /tmp may be a tmpfs where fsync costs nothing);
//! - `WEIR_BENCH_ONLY`: comma-separated subset of `batch-bare,batch-weir,disk,single-bare,
//!   single-weir` (for profiling one run);
//! - `WEIR_BENCH_WEIR_CONFIG`: TOML appended to weir's config, to try a setting (for example
//!   `[log]` `flush_interval_ms = 1`).
//!
//! Other processes on the machine skew every figure; each run prints how many cores the rest of
//! the machine used meanwhile, so a noisy run can be recognised and repeated.

#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use weir::log::storage::FsStorage;
use weir::log::{Log, RecordKind};

const CONNECTIONS: usize = 64;
const BATCH_EVENTS: usize = 100;
/// Size of one event as sent (the log stores it enriched, so somewhat larger).
const EVENT_BYTES: usize = 500;
const WRITE_KEY: &str = "bench-key";
/// Message ids are `<run prefix>-<12 digits>`; fixed width so a body template can be reused
/// with the digits overwritten in place.
const ID_DIGITS: usize = 12;
const DEFAULT_SECS: f64 = 8.0;
/// CPU used by other processes during a run above which the run is flagged as noisy.
const NOISY_CORES: f64 = 0.1;
/// Set in the environment of the child process that plays the bare hyper server.
const ROLE_ENV: &str = "WEIR_BENCH_ROLE";
const BARE_ROLE: &str = "bare-server";

/// Targets the figures are compared with (ARCHITECTURE's performance goals).
const BATCH_TARGET_EVENTS: f64 = 250_000.0;
const BATCH_TARGET_DISK_SHARE: f64 = 0.5;
const SINGLE_TARGET_BARE_SHARE: f64 = 0.5;

fn main() -> ExitCode {
    if std::env::var(ROLE_ENV).as_deref() == Ok(BARE_ROLE) {
        return bare::main();
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ingest bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// `POST /v1/batch` with [`BATCH_EVENTS`] events.
    Batch,
    /// `POST /v1/track` with one event.
    Single,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Batch => "batch",
            Scenario::Single => "single",
        }
    }

    fn describe(self) -> String {
        match self {
            Scenario::Batch => format!("POST /v1/batch, {BATCH_EVENTS} events of ~{EVENT_BYTES} B"),
            Scenario::Single => format!("POST /v1/track, 1 event of ~{EVENT_BYTES} B"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Scenario::Batch => "/v1/batch",
            Scenario::Single => "/v1/track",
        }
    }

    fn events_per_request(self) -> u64 {
        match self {
            Scenario::Batch => BATCH_EVENTS as u64,
            Scenario::Single => 1,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerKind {
    Weir,
    Bare,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Weir => "weir",
            ServerKind::Bare => "bare",
        }
    }
}

struct Settings {
    duration: Duration,
    base_dir: PathBuf,
    only: Option<Vec<String>>,
    /// Appended to weir's config file.
    weir_config: String,
    /// Prefix of every messageId of this run: unique per bench process.
    id_prefix: String,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let secs = match std::env::var("WEIR_BENCH_SECS") {
            Ok(s) => s
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .with_context(|| format!("WEIR_BENCH_SECS={s}: expected a positive number"))?,
            Err(_) => DEFAULT_SECS,
        };
        let base_dir = std::env::var_os("WEIR_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        std::fs::create_dir_all(&base_dir)
            .with_context(|| format!("cannot create {}", base_dir.display()))?;
        let only = std::env::var("WEIR_BENCH_ONLY")
            .ok()
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Settings {
            duration: Duration::from_secs_f64(secs),
            base_dir,
            only,
            weir_config: std::env::var("WEIR_BENCH_WEIR_CONFIG").unwrap_or_default(),
            id_prefix: format!("bench-{}-{}", std::process::id(), started.as_millis()),
        })
    }

    fn wants(&self, run: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == run))
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    print_machine(&settings, cores);

    // The load generator gets as many workers as there are cores, like the servers: all of them
    // compete for the same cores, which is the point of measuring ratios in one run.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let ids = Arc::new(AtomicU64::new(0));

    let mut runs: Vec<RunResult> = Vec::new();
    let mut disk: Option<DiskResult> = None;
    for scenario in [Scenario::Batch, Scenario::Single] {
        for kind in [ServerKind::Bare, ServerKind::Weir] {
            if !settings.wants(&format!("{}-{}", scenario.name(), kind.name())) {
                continue;
            }
            let result = measure(&runtime, &settings, scenario, kind, &ids)?;
            result.print();
            runs.push(result);
        }
        if scenario == Scenario::Batch && settings.wants("disk") {
            // One chunk = one batch request as the log stores it; measured from weir's log when
            // the batch run happened, else estimated.
            let stored = runs
                .iter()
                .find_map(|r| r.log.as_ref().map(|l| l.bytes_per_event))
                .unwrap_or(EVENT_BYTES as f64 * 1.3);
            let chunk = (stored * BATCH_EVENTS as f64).round() as usize;
            // Both ways a raw log could use the disk; the faster is the baseline.
            let mut best: Option<DiskResult> = None;
            for mode in [DiskMode::Append, DiskMode::Overwrite] {
                let d = disk_baseline(&settings.base_dir, chunk, settings.duration, mode)?;
                d.print();
                if best
                    .as_ref()
                    .is_none_or(|b| d.events_per_s() > b.events_per_s())
                {
                    best = Some(d);
                }
            }
            disk = best;
        }
    }

    print_summary(&runs, disk.as_ref(), cores);
    let lost: u64 = runs
        .iter()
        .filter_map(|r| r.log.as_ref())
        .map(|l| l.missing_acked)
        .sum();
    if lost > 0 {
        eprintln!("FAILED: {lost} events were acknowledged with 200 but are in neither log");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One scenario against one server: start it, load it, and (for weir) read its log back.
fn measure(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    scenario: Scenario,
    kind: ServerKind,
    ids: &Arc<AtomicU64>,
) -> anyhow::Result<RunResult> {
    settle();
    println!(
        "\n--- {} against {} ({:.0} s) ---",
        scenario.describe(),
        kind.name(),
        settings.duration.as_secs_f64()
    );
    let server = match kind {
        ServerKind::Weir => Server::start_weir(&settings.base_dir, &settings.weir_config)?,
        ServerKind::Bare => Server::start_bare()?,
    };
    let template = Arc::new(BodyTemplate::new(scenario, &settings.id_prefix));
    println!(
        "  request body {} B: {} events of ~{} B",
        template.bytes.len(),
        template.id_at.len(),
        template.bytes.len() / template.id_at.len()
    );
    let server_cpu = CpuClock::of(server.pid());
    let client_cpu = CpuClock::of(std::process::id());
    let machine_cpu = machine_busy_seconds().unwrap_or(0.0);
    let load = runtime.block_on(load::run(
        server.ingest,
        scenario,
        template,
        ids.clone(),
        settings.duration,
    ))?;
    let server_cpu_s = server_cpu.elapsed()?;
    let client_cpu_s = client_cpu.elapsed()?;
    let others_cpu_s =
        (machine_busy_seconds().unwrap_or(0.0) - machine_cpu - server_cpu_s - client_cpu_s)
            .max(0.0);
    let metrics = match server.admin {
        Some(admin) => Some(runtime.block_on(load::get_text(admin, "/metrics"))?),
        None => None,
    };
    let data_dir = server.stop()?;
    let log = match &data_dir {
        Some(dir) => Some(check_log(
            &dir.path().join("data"),
            &settings.id_prefix,
            load.ids.clone(),
            &load.acked,
        )?),
        None => None,
    };
    Ok(RunResult {
        scenario,
        kind,
        load,
        server_cpu_s,
        client_cpu_s,
        others_cpu_s,
        log,
        metrics: metrics.as_deref().map(WeirMetrics::parse),
    })
}

/// A request body with placeholders where the message ids go.
struct BodyTemplate {
    bytes: Vec<u8>,
    /// Where each event's [`ID_DIGITS`] id digits start.
    id_at: Vec<usize>,
}

impl BodyTemplate {
    fn new(scenario: Scenario, prefix: &str) -> Self {
        let n = scenario.events_per_request() as usize;
        let mut bytes = Vec::with_capacity(n * (EVENT_BYTES + 1) + 64);
        let mut id_at = Vec::with_capacity(n);
        if scenario == Scenario::Batch {
            bytes.extend_from_slice(br#"{"sentAt":"2024-05-01T12:00:01.000Z","batch":["#);
        }
        let marker = format!("{prefix}-{}", "0".repeat(ID_DIGITS));
        for slot in 0..n {
            if slot > 0 {
                bytes.push(b',');
            }
            let event = event_json(&marker, slot);
            let at = event
                .find(&marker)
                .unwrap_or_else(|| unreachable!("the event holds its message id"));
            id_at.push(bytes.len() + at + prefix.len() + 1);
            bytes.extend_from_slice(event.as_bytes());
        }
        if scenario == Scenario::Batch {
            bytes.extend_from_slice(b"]}");
        }
        BodyTemplate { bytes, id_at }
    }

    /// The body with ids `first..first + n`.
    fn fill(&self, first: u64) -> Bytes {
        let mut body = self.bytes.clone();
        for (i, &at) in self.id_at.iter().enumerate() {
            let mut id = first + i as u64;
            for b in body[at..at + ID_DIGITS].iter_mut().rev() {
                *b = b'0' + (id % 10) as u8;
                id /= 10;
            }
        }
        Bytes::from(body)
    }
}

/// A Segment track event of [`EVENT_BYTES`] bytes, shaped like what analytics-python sends.
fn event_json(message_id: &str, slot: usize) -> String {
    let mut event = serde_json::json!({
        "type": "track",
        "event": "Order Completed",
        "userId": format!("user-{:05}", slot * 7919 % 100_000),
        "messageId": message_id,
        "timestamp": "2024-05-01T12:00:00.000Z",
        "properties": {
            "orderId": format!("order-{slot:06}"),
            "revenue": 42.5,
            "currency": "EUR",
            "products": [
                {"sku": "SKU-1042", "name": "Espresso beans 1 kg", "price": 24.0, "quantity": 1},
                {"sku": "SKU-2210", "name": "Milk frother", "price": 18.5, "quantity": 1}
            ],
            "notes": ""
        },
        "context": {
            "library": {"name": "analytics-python", "version": "2.4.0"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)"
        }
    });
    let len = event.to_string().len();
    let pad = EVENT_BYTES.saturating_sub(len);
    event["properties"]["notes"] = serde_json::Value::String("n".repeat(pad));
    event.to_string()
}

/// What one connection or one whole load run saw.
#[derive(Default)]
struct LoadResult {
    elapsed: Duration,
    ok_requests: u64,
    ok_events: u64,
    /// Non-200 answers by status.
    refused: BTreeMap<u16, u64>,
    /// Requests without an answer (connection errors).
    io_errors: u64,
    /// Latency of each 200, microseconds; sorted once the run is merged.
    latencies_us: Vec<u32>,
    /// Id ranges (first, count) acknowledged with 200.
    acked: Vec<(u64, u64)>,
    /// Every id handed out in the run.
    ids: Range<u64>,
}

impl LoadResult {
    fn merge(&mut self, other: LoadResult) {
        self.ok_requests += other.ok_requests;
        self.ok_events += other.ok_events;
        for (status, n) in other.refused {
            *self.refused.entry(status).or_default() += n;
        }
        self.io_errors += other.io_errors;
        self.latencies_us.extend(other.latencies_us);
        self.acked.extend(other.acked);
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q) as f64 / 1000.0
    }
}

/// The `q` quantile of sorted values (nearest rank), 0 when empty.
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

mod load {
    //! The load generator: raw hyper 1 HTTP/1.1 client connections, one task each.

    use super::*;
    use hyper::client::conn::http1::{self, SendRequest};

    pub async fn run(
        addr: SocketAddr,
        scenario: Scenario,
        template: Arc<BodyTemplate>,
        ids: Arc<AtomicU64>,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        // Connect first, so connection set-up is not part of the measurement.
        let mut senders = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            senders.push(connect(addr).await?);
        }
        let first_id = ids.load(Ordering::Relaxed);
        let started = Instant::now();
        let deadline = started + duration;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
        );
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|sender| {
                let template = template.clone();
                let ids = ids.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let stats =
                        connection(addr, sender, scenario, &template, &ids, &auth, deadline).await;
                    (stats, Instant::now())
                })
            })
            .collect();
        let mut total = LoadResult::default();
        let mut finished = started;
        for task in tasks {
            let (stats, done) = task.await.context("a load connection panicked")?;
            total.merge(stats);
            finished = finished.max(done);
        }
        // Requests in flight at the deadline are waited for, so the window ends with the last
        // answer, not at the deadline.
        total.elapsed = finished - started;
        total.ids = first_id..ids.load(Ordering::Relaxed);
        total.latencies_us.sort_unstable();
        Ok(total)
    }

    async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes the connection; errors
            // surface on the sender.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends requests back to back on one connection until `deadline`.
    async fn connection(
        addr: SocketAddr,
        sender: SendRequest<Full<Bytes>>,
        scenario: Scenario,
        template: &BodyTemplate,
        ids: &AtomicU64,
        auth: &str,
        deadline: Instant,
    ) -> LoadResult {
        let mut stats = LoadResult::default();
        let mut sender = Some(sender);
        let n = scenario.events_per_request();
        while Instant::now() < deadline {
            let s = match &mut sender {
                Some(s) => s,
                None => match connect(addr).await {
                    Ok(s) => sender.insert(s),
                    Err(_) => {
                        stats.io_errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let first = ids.fetch_add(n, Ordering::Relaxed);
            let req = Request::post(scenario.path())
                .header(header::HOST, addr.to_string())
                .header(header::AUTHORIZATION, auth)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(template.fill(first)));
            let Ok(req) = req else {
                unreachable!("the request is built from valid parts")
            };
            let started = Instant::now();
            match exchange(s, req).await {
                Ok(StatusCode::OK) => {
                    let us = started.elapsed().as_micros();
                    stats
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    stats.ok_requests += 1;
                    stats.ok_events += n;
                    stats.acked.push((first, n));
                }
                Ok(status) => *stats.refused.entry(status.as_u16()).or_default() += 1,
                Err(_) => {
                    stats.io_errors += 1;
                    sender = None;
                }
            }
        }
        stats
    }

    async fn exchange(
        sender: &mut SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<StatusCode> {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok(status)
    }

    /// A GET on a fresh connection (the admin listener's `/metrics`).
    pub async fn get_text(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            bail!("GET {path} on {addr} answered {}", resp.status());
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

mod bare {
    //! The baseline server: hyper 1 with the same per-request JSON work as weir's gateway minus
    //! everything weir adds (validation, enrichment, dedupe, the log, the fsync). Runs as a
    //! child process of the bench, so like weir it has its own runtime and competes with the
    //! load generator for the cores the same way.

    use super::*;
    use hyper::service::service_fn;

    static EVENTS: AtomicU64 = AtomicU64::new(0);

    pub fn main() -> ExitCode {
        // The parent closes our stdin to stop us (or dies, which does the same).
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        });
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("bare server: cannot start a runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(serve()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare server: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve() -> anyhow::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
        drop(out);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    }

    async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Ok(answer(StatusCode::BAD_REQUEST));
        };
        if !authorized {
            return Ok(answer(StatusCode::UNAUTHORIZED));
        }
        let events = value
            .get("batch")
            .and_then(serde_json::Value::as_array)
            .map_or(1, Vec::len);
        EVENTS.fetch_add(events as u64, Ordering::Relaxed);
        Ok(answer(StatusCode::OK))
    }

    fn answer(status: StatusCode) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"success":true}"#)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// A server under test, in its own process.
struct Server {
    kind: ServerKind,
    child: Option<Child>,
    ingest: SocketAddr,
    admin: Option<SocketAddr>,
    /// weir's temp dir (config, data, stderr log).
    dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start_weir(base: &Path, extra_config: &str) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("weir-bench-")
            .tempdir_in(base)
            .with_context(|| format!("cannot create a temp dir in {}", base.display()))?;
        let config = format!(
            r#"data_dir = {data:?}
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "bench-admin-token-0123456789"
[limits]
max_batch_events = 2000
[[sources]]
name = "bench"
write_keys = ["{WRITE_KEY}"]
{extra_config}
"#,
            data = dir.path().join("data").display().to_string()
        );
        let started = serve::start(dir.path(), &config)?;
        Ok(Server {
            kind: ServerKind::Weir,
            child: Some(started.child),
            ingest: started.ingest,
            admin: Some(started.admin),
            dir: Some(dir),
        })
    }

    fn start_bare() -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("cannot find the bench executable")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, BARE_ROLE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the bare server")?;
        let lines = serve::read_banner(&mut child, |l| l.starts_with("listening"));
        let addr = lines
            .last()
            .and_then(|l| l.strip_prefix("listening "))
            .and_then(|a| a.parse().ok());
        let Some(ingest) = addr else {
            let _ = child.kill();
            bail!("the bare server did not print its address: {lines:?}");
        };
        Ok(Server {
            kind: ServerKind::Bare,
            child: Some(child),
            ingest,
            admin: None,
            dir: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops the server (weir: SIGTERM, so it drains and closes its log) and hands back weir's
    /// temp dir for reading the log.
    fn stop(mut self) -> anyhow::Result<Option<tempfile::TempDir>> {
        let Some(mut child) = self.child.take() else {
            return Ok(self.dir.take());
        };
        match self.kind {
            ServerKind::Weir => {
                // SAFETY: a signal to our own child, whose pid cannot have been reused: it has
                // not been waited for.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
            ServerKind::Bare => drop(child.stdin.take()),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    eprintln!("warning: {} exited with {status}", self.kind.name());
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not stop within 60 s", self.kind.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.dir.take())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU time (user + system) a process used since this clock was made.
struct CpuClock {
    pid: u32,
    start: f64,
}

impl CpuClock {
    fn of(pid: u32) -> CpuClock {
        CpuClock {
            pid,
            start: cpu_seconds(pid).unwrap_or(0.0),
        }
    }

    fn elapsed(&self) -> anyhow::Result<f64> {
        Ok(cpu_seconds(self.pid)? - self.start)
    }
}

/// CPU time every process on the machine used since boot (user, nice, system, irq, softirq),
/// from `/proc/stat`.
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    Ok(busy / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// utime + stime of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc stat line")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

/// What weir's logs hold after a run.
///
/// An event counts as durable if it is in the raw log or in the processed log: the pipeline
/// copies raw events into the processed log, and retention then deletes raw segments that the
/// pipeline and the dedupe journal are past, so a long run keeps only the tail of the raw log.
struct LogCheck {
    /// Events of this run found in either log.
    found: u64,
    found_raw: u64,
    found_processed: u64,
    /// 200-acknowledged events in neither log.
    missing_acked: u64,
    /// Events stored more than once in the same log.
    duplicates: u64,
    /// Records that are not events, or events not sent by this run.
    other: u64,
    /// Raw-log bytes (frames and headers included) per record.
    bytes_per_event: f64,
}

fn check_log(
    data_dir: &Path,
    prefix: &str,
    ids: Range<u64>,
    acked: &[(u64, u64)],
) -> anyhow::Result<LogCheck> {
    let len = (ids.end - ids.start) as usize;
    let mut durable = vec![false; len];
    let raw = scan_log(&data_dir.join("log").join("raw"), prefix, &ids)?;
    let processed = scan_log(&data_dir.join("log").join("processed"), prefix, &ids)?;
    for (i, d) in durable.iter_mut().enumerate() {
        *d = raw.seen[i] || processed.seen[i];
    }
    let missing_acked = acked
        .iter()
        .flat_map(|&(first, n)| first..first + n)
        .filter(|id| !durable[(id - ids.start) as usize])
        .count() as u64;
    Ok(LogCheck {
        found: durable.iter().filter(|d| **d).count() as u64,
        found_raw: raw.found,
        found_processed: processed.found,
        missing_acked,
        duplicates: raw.duplicates + processed.duplicates,
        other: raw.other + processed.other,
        bytes_per_event: raw.bytes as f64 / raw.records.max(1) as f64,
    })
}

/// The events of one log, by id of this run.
struct LogScan {
    seen: Vec<bool>,
    found: u64,
    duplicates: u64,
    other: u64,
    records: u64,
    bytes: u64,
}

fn scan_log(dir: &Path, prefix: &str, ids: &Range<u64>) -> anyhow::Result<LogScan> {
    #[derive(serde::Deserialize)]
    struct Ids<'a> {
        #[serde(rename = "messageId", borrow)]
        message_id: &'a str,
    }
    let mut scan = LogScan {
        seen: vec![false; (ids.end - ids.start) as usize],
        found: 0,
        duplicates: 0,
        other: 0,
        records: 0,
        bytes: 0,
    };
    if !dir.exists() {
        return Ok(scan);
    }
    let log = Log::open_read_only(dir, Arc::new(FsStorage))
        .with_context(|| format!("cannot open weir's log {}", dir.display()))?;
    scan.bytes = log.size_bytes();
    let mut reader = log.reader(log.oldest());
    loop {
        let batch = reader.read_batch(4096)?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            scan.records += 1;
            if record.meta.kind != RecordKind::Event {
                scan.other += 1;
                continue;
            }
            let slot = serde_json::from_slice::<Ids<'_>>(&record.payload)
                .ok()
                .and_then(|e| {
                    e.message_id
                        .strip_prefix(prefix)?
                        .strip_prefix('-')?
                        .parse()
                        .ok()
                })
                .filter(|id| ids.contains(id))
                .map(|id: u64| (id - ids.start) as usize);
            match slot {
                Some(i) if scan.seen[i] => scan.duplicates += 1,
                Some(i) => {
                    scan.seen[i] = true;
                    scan.found += 1;
                }
                None => scan.other += 1,
            }
        }
    }
    Ok(scan)
}

/// The figures weir exports on `/metrics` that explain where its time goes.
#[derive(Default)]
struct WeirMetrics {
    /// Group commits of the raw log (the one ingest acks wait for).
    raw_fsync: Histogram,
    raw_records: f64,
    /// Group commits of the processed log (the pipeline's output, off the ack path).
    processed_fsync: Histogram,
    processed_records: f64,
    ack: Histogram,
}

impl WeirMetrics {
    fn parse(text: &str) -> WeirMetrics {
        let mut m = WeirMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let (fsync, records) = if labels.contains(r#"log="raw""#) {
                (&mut m.raw_fsync, &mut m.raw_records)
            } else if labels.contains(r#"log="processed""#) {
                (&mut m.processed_fsync, &mut m.processed_records)
            } else {
                match name {
                    "weir_ingest_ack_seconds_sum" => m.ack.sum = value,
                    "weir_ingest_ack_seconds_count" => m.ack.count = value,
                    "weir_ingest_ack_seconds_bucket" => m.ack.bucket(labels, value),
                    _ => {}
                }
                continue;
            };
            match name {
                "weir_log_fsync_seconds_sum" => fsync.sum = value,
                "weir_log_fsync_seconds_count" => fsync.count = value,
                "weir_log_fsync_seconds_bucket" => fsync.bucket(labels, value),
                "weir_log_appended_records_total" => *records = value,
                _ => {}
            }
        }
        m
    }
}

/// A Prometheus histogram as scraped: cumulative buckets by upper bound (seconds).
#[derive(Default)]
struct Histogram {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    fn bucket(&mut self, labels: &str, value: f64) {
        let le = labels
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| {
                if s == "+Inf" {
                    Ok(f64::INFINITY)
                } else {
                    s.parse()
                }
            });
        if let Some(Ok(le)) = le {
            self.buckets.push((le, value));
        }
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.sum / self.count * 1000.0
        }
    }

    /// Upper bound (ms) of the bucket holding the `q` quantile.
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut buckets = self.buckets.clone();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .iter()
            .find(|(_, n)| *n >= q * self.count)
            .map_or(0.0, |(le, _)| le * 1000.0)
    }
}

struct RunResult {
    scenario: Scenario,
    kind: ServerKind,
    load: LoadResult,
    server_cpu_s: f64,
    client_cpu_s: f64,
    /// CPU the rest of the machine used meanwhile: noise.
    others_cpu_s: f64,
    log: Option<LogCheck>,
    metrics: Option<WeirMetrics>,
}

impl RunResult {
    fn secs(&self) -> f64 {
        self.load.elapsed.as_secs_f64()
    }

    /// Events per second that count: for weir the ones found in its logs, for the bare server
    /// the ones answered with 200.
    fn events_per_s(&self) -> f64 {
        let events = self.log.as_ref().map_or(self.load.ok_events, |l| l.found);
        events as f64 / self.secs()
    }

    fn requests_per_s(&self) -> f64 {
        self.load.ok_requests as f64 / self.secs()
    }

    fn print(&self) {
        let l = &self.load;
        println!(
            "  {:.2} s, {} requests answered 200 ({} events), refused {:?}, connection errors {}",
            self.secs(),
            l.ok_requests,
            l.ok_events,
            l.refused,
            l.io_errors
        );
        println!(
            "  {:.0} events/s, {:.0} requests/s, ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.events_per_s(),
            self.requests_per_s(),
            l.percentile_ms(0.50),
            l.percentile_ms(0.99),
            l.percentile_ms(1.0),
        );
        let others = self.others_cpu_s / self.secs();
        println!(
            "  CPU: server {:.2} cores, load generator {:.2} cores, other processes {:.2} cores{}",
            self.server_cpu_s / self.secs(),
            self.client_cpu_s / self.secs(),
            others,
            if others > NOISY_CORES {
                " (WARNING: a busy machine; repeat on a quiet one)"
            } else {
                ""
            }
        );
        if let Some(log) = &self.log {
            println!(
                "  logs: {} events of this run durable ({:.0}/s; {} still in the raw log, {} in \
                 the processed log), {} acked events missing, {} duplicates, {} other records, \
                 {:.0} B per raw record",
                log.found,
                log.found as f64 / self.secs(),
                log.found_raw,
                log.found_processed,
                log.missing_acked,
                log.duplicates,
                log.other,
                log.bytes_per_event
            );
        }
        if let Some(m) = &self.metrics {
            for (name, fsync, records) in [
                ("raw", &m.raw_fsync, m.raw_records),
                ("processed", &m.processed_fsync, m.processed_records),
            ] {
                let n = fsync.count.max(1.0);
                println!(
                    "  {name} log: {:.0} fsyncs ({:.0}/s), mean {:.3} ms, p50 <= {:.3} ms, p99 <= \
                     {:.3} ms, {:.1} records per fsync, fsync busy {:.0}% of the run",
                    fsync.count,
                    fsync.count / self.secs(),
                    fsync.mean_ms(),
                    fsync.quantile_ms(0.5),
                    fsync.quantile_ms(0.99),
                    records / n,
                    fsync.sum / self.secs() * 100.0,
                );
            }
            println!(
                "  requests per raw fsync {:.1}; server-side ack mean {:.3} ms",
                l.ok_requests as f64 / m.raw_fsync.count.max(1.0),
                m.ack.mean_ms()
            );
        }
    }
}

/// How the disk baseline writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskMode {
    /// Appends to a new file: every fdatasync also commits the file's new size (a journal
    /// commit on ext4).
    Append,
    /// Overwrites a file written beforehand, round and round: fdatasync only writes data. weir's
    /// log gets close to this by writing zeros ahead of its appends.
    Overwrite,
}

impl DiskMode {
    fn name(self) -> &'static str {
        match self {
            DiskMode::Append => "append",
            DiskMode::Overwrite => "overwrite",
        }
    }
}

/// Sequential write + fdatasync of fixed-size chunks: what the disk gives a log that syncs
/// every batch on its own.
struct DiskResult {
    mode: DiskMode,
    chunk_bytes: usize,
    elapsed: Duration,
    chunks: u64,
    latencies_us: Vec<u32>,
}

impl DiskResult {
    fn mb_per_s(&self) -> f64 {
        (self.chunks * self.chunk_bytes as u64) as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// Events per second if each chunk is one batch request.
    fn events_per_s(&self) -> f64 {
        (self.chunks * BATCH_EVENTS as u64) as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "  {}: {} chunks of {} B in {:.2} s: {:.1} MB/s, {:.0} fsyncs/s = {:.0} events/s at {BATCH_EVENTS} \
             events per chunk; write+fdatasync p50 {:.3} ms, p99 {:.3} ms",
            self.mode.name(),
            self.chunks,
            self.chunk_bytes,
            self.elapsed.as_secs_f64(),
            self.mb_per_s(),
            self.chunks as f64 / self.elapsed.as_secs_f64(),
            self.events_per_s(),
            percentile(&self.latencies_us, 0.5) as f64 / 1000.0,
            percentile(&self.latencies_us, 0.99) as f64 / 1000.0,
        );
    }
}

/// Lets the disk finish with the previous run (its dirty pages, and on a `discard` mount the
/// trims of its deleted files) so that it is not billed to the next one.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs(2));
}

fn disk_baseline(
    base: &Path,
    chunk_bytes: usize,
    duration: Duration,
    mode: DiskMode,
) -> anyhow::Result<DiskResult> {
    settle();
    /// Like the log's segments: a new file after this many bytes (`Append`); the size of the
    /// file written round and round (`Overwrite`).
    const FILE_BYTES: u64 = 128 << 20;
    println!(
        "\n--- disk baseline ({}): write {chunk_bytes} B + fdatasync, back to back ({:.0} s) ---",
        mode.name(),
        duration.as_secs_f64()
    );
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-disk-")
        .tempdir_in(base)?;
    // Not zeros, in case anything below compresses.
    let chunk: Vec<u8> = (0..chunk_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let open = |n: u64| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.path().join(format!("{n:04}.dat")))
    };
    let mut files = 0;
    let mut file = open(files)?;
    if mode == DiskMode::Overwrite {
        // Written and synced before the clock starts.
        let block = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES >> 20 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let mut in_file = 0u64;
    let mut latencies_us = Vec::new();
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        if in_file + chunk_bytes as u64 > FILE_BYTES {
            if mode == DiskMode::Append {
                files += 1;
                file = open(files)?;
            }
            in_file = 0;
        }
        let t = Instant::now();
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, in_file)?;
        file.sync_data()?;
        latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        in_file += chunk_bytes as u64;
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(DiskResult {
        mode,
        chunk_bytes,
        elapsed,
        chunks: latencies_us.len() as u64,
        latencies_us,
    })
}

fn print_machine(settings: &Settings, cores: usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("weir ingest bench");
    println!(
        "  machine: {cores} cores ({cpu}), Linux {}; data dirs in {} ({})",
        kernel.trim(),
        settings.base_dir.display(),
        filesystem_of(&settings.base_dir)
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  load average before the bench: {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  load: {CONNECTIONS} keep-alive connections, requests back to back, {:.0} s per run; \
         the load generator shares the {cores} cores with the server under test",
        settings.duration.as_secs_f64()
    );
}

/// The file system type holding `path`, from /proc/mounts (longest matching mount point).
fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, mount, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), format!("{fs} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown file system".into(), |(_, fs)| fs)
}

fn print_summary(runs: &[RunResult], disk: Option<&DiskResult>, cores: usize) {
    println!("\n=== summary ===");
    println!(
        "{:<8} {:<6} {:>11} {:>10} {:>9} {:>9} {:>11} {:>9} {:>7} {:>10}",
        "scenario",
        "server",
        "events/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server CPU",
        "loadgen",
        "others",
        "weir/bare"
    );
    let find = |s: Scenario, k: ServerKind| runs.iter().find(|r| r.scenario == s && r.kind == k);
    for r in runs {
        let ratio = match (r.kind, find(r.scenario, ServerKind::Bare)) {
            (ServerKind::Weir, Some(bare)) => {
                format!("{:.2}", r.events_per_s() / bare.events_per_s())
            }
            _ => String::new(),
        };
        println!(
            "{:<8} {:<6} {:>11.0} {:>10.0} {:>9.2} {:>9.2} {:>11.2} {:>9.2} {:>7.2} {:>10}",
            r.scenario.name(),
            r.kind.name(),
            r.events_per_s(),
            r.requests_per_s(),
            r.load.percentile_ms(0.5),
            r.load.percentile_ms(0.99),
            r.server_cpu_s / r.secs(),
            r.client_cpu_s / r.secs(),
            r.others_cpu_s / r.secs(),
            ratio
        );
    }
    if let Some(d) = disk {
        println!(
            "{:<8} {:<6} {:>11.0} {:>10.0} {:>9.3} {:>9.3}   ({:.1} MB/s in {} B chunks, {}; the faster of append and overwrite)",
            "disk",
            "fsync",
            d.events_per_s(),
            d.chunks as f64 / d.elapsed.as_secs_f64(),
            percentile(&d.latencies_us, 0.5) as f64 / 1000.0,
            percentile(&d.latencies_us, 0.99) as f64 / 1000.0,
            d.mb_per_s(),
            d.chunk_bytes,
            d.mode.name()
        );
    }
    println!(
        "(weir events/s = events found in its logs afterwards; CPU in cores of {cores}; others = \
         the rest of the machine, noise)"
    );

    println!("\ntargets:");
    if let Some(weir) = find(Scenario::Batch, ServerKind::Weir) {
        let target = disk.map_or(BATCH_TARGET_EVENTS, |d| {
            BATCH_TARGET_EVENTS.min(BATCH_TARGET_DISK_SHARE * d.events_per_s())
        });
        let vs_disk = disk.map_or_else(String::new, |d| {
            format!(
                ", {:.2}x the disk baseline",
                weir.events_per_s() / d.events_per_s()
            )
        });
        println!(
            "  batch:  weir {:.0} events/s{vs_disk}; target >= {:.0} (250k, or 50% of the disk \
             baseline if lower): {}",
            weir.events_per_s(),
            target,
            verdict(weir.events_per_s() >= target)
        );
    }
    if let (Some(weir), Some(bare)) = (
        find(Scenario::Single, ServerKind::Weir),
        find(Scenario::Single, ServerKind::Bare),
    ) {
        let target = SINGLE_TARGET_BARE_SHARE * bare.events_per_s();
        println!(
            "  single: weir {:.0} events/s = {:.2}x bare; target >= {:.0} (50% of bare): {}",
            weir.events_per_s(),
            weir.events_per_s() / bare.events_per_s(),
            target,
            verdict(weir.events_per_s() >= target)
        );
    }
    println!(
        "\nnote: the load generator runs on the same {cores} cores as the server; absolute figures \
         are lower than on a dedicated server, compare the ratios."
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
