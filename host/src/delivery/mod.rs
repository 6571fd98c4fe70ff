//! Destination delivery: each destination reads the processed log on its own, turns events into
//! HTTP requests with its plugin, sends them, and reads the answers with the plugin's `classify`.
//!
//! Guarantees:
//! - **isolation**: a destination runs on its own thread, with its own log position, HTTP
//!   client, concurrency and rate limit; a slow, hanging or failing destination holds back no
//!   other;
//! - **per-key order**: events with the same ordering key (`anonymousId`, else `userId`) are sent
//!   in log order; when one fails, the key's later events wait behind it in the durable retry
//!   store, while other keys keep flowing and the log position advances;
//! - **at least once**: an event leaves the picture only once the destination accepted it, or it
//!   is in the dead-letter queue; the retry store and the dead letters are durable before the
//!   log position moves past their events, so a crash redelivers at most what was in flight;
//! - retries back off exponentially with jitter (or after the delay the destination asked for),
//!   up to `max_attempts` and `max_age`, then the event is dead-lettered with the last error and
//!   its key's later events go on. A replay delivers it after them.

pub mod http;
pub mod retry_store;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::dlq::{DeadLetter, Dlq};
use crate::event::check_kept;
use crate::ids::{ConsumerId, Offset, SourceId};
use crate::log::{OffsetStore, RecordKind, Shared};
use crate::plugin::bindings::types::{Event, EventVerdict, Outcome, Request, Verdict};
use crate::plugin::isolate::{EventResult, run_isolated};
use crate::plugin::registry::PluginSlot;
use crate::plugin::{CallError, LoadedVersion, PluginKind};
use crate::telemetry::{DeliveryLabels, DeliveryMetrics};
use crate::timestamp;
use http::{AllowList, SendError, Sender};
use retry_store::{Held, RetryStore};

/// When to give up on an event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: exponential, with full jitter in its upper half.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(self.max_backoff);
        let half = base / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// A destination as configured.
#[derive(Clone, Debug)]
pub struct DestinationSpec {
    pub name: String,
    /// The destination-world plugin that builds and classifies requests.
    pub plugin: String,
    pub sources: Vec<SourceId>,
    /// Transformers and filters run on this destination's events only, before `plugin`.
    pub chain: Vec<String>,
    /// `host` or `host:port` entries requests may go to.
    pub allow_hosts: Vec<String>,
    /// Events per `build` call.
    pub batch_size: usize,
    /// Lanes sending in parallel; a key always uses the same lane, so its order holds.
    pub concurrency: usize,
    /// Requests per second, with a burst.
    pub rate_limit: Option<(u32, u32)>,
    pub retry: RetryPolicy,
    /// Per request: connect, send and read the answer.
    pub timeout: Duration,
    /// Events the retry store may hold; when full the destination stops reading new events.
    pub retry_store_capacity: usize,
    /// A new destination delivers the whole processed log still kept, not just what comes next.
    pub backfill: bool,
}

impl DestinationSpec {
    pub fn stage(&self) -> String {
        format!("destination:{}", self.name)
    }

    pub fn consumer(&self) -> ConsumerId {
        ConsumerId::new(&self.stage())
    }
}

/// A request to put dead letters back into delivery.
pub struct Replay {
    pub letters: Vec<DeadLetter>,
    pub done: oneshot::Sender<Result<usize, String>>,
}

/// An event on its way to the destination.
#[derive(Clone)]
struct Item {
    key: String,
    source: String,
    log_offset: u64,
    payload: Vec<u8>,
    /// Its retry-store entry, when it was held.
    held: Option<u64>,
    attempts: u32,
    first_failed_ms: i64,
}

/// What became of an item.
#[derive(Clone)]
enum Fate {
    Delivered,
    /// Not accepted this time (or not sent: held behind an earlier failure of its key).
    Retry {
        after: Option<Duration>,
        error: String,
        attempted: bool,
    },
    Dead(String),
}

/// The delivery engine of one destination.
pub struct Delivery {
    pub spec: DestinationSpec,
    pub log: Arc<Shared>,
    pub offsets: Arc<OffsetStore>,
    pub plugin: Arc<PluginSlot>,
    pub chain: Vec<Arc<PluginSlot>>,
    pub dlq: Arc<Dlq>,
    pub metrics: Arc<DeliveryMetrics>,
    pub store_dir: PathBuf,
    pub replays: mpsc::Receiver<Replay>,
}

struct Worker<'a> {
    d: &'a Delivery,
    sender: Sender,
    limiter: Option<DefaultDirectRateLimiter>,
    store: RetryStore,
    labels: DeliveryLabels,
    breaker: Breaker,
}

/// Requests in a row without a success after which a destination counts as down.
const BREAKER_THRESHOLD: u32 = 5;

/// The circuit breaker of one destination. Per-key holding copes with a destination that fails
/// some events; a destination that is down fails them all, and attempting every new event once
/// (build, send, classify, hold) would spend the CPU the healthy destinations need. So after
/// [`BREAKER_THRESHOLD`] requests in a row got no success (no answer, or a retry verdict), the
/// destination stops reading the log and sending retries; after the retry policy's backoff for
/// its number of trips, one held event is sent as a probe. A probe that succeeds closes the
/// breaker; one that fails opens it again for longer. Events wait in the log meanwhile.
#[derive(Default)]
struct Breaker {
    /// Requests in a row that failed; written by the lanes, hence atomic.
    failures: std::sync::atomic::AtomicU32,
    /// While open: when the next probe may go.
    open_until_ms: Option<i64>,
    trips: u32,
}

enum BreakerState {
    Closed,
    Open,
    /// Open, and the wait is over: send one probe.
    Probe,
}

impl Breaker {
    fn request_failed(&self) {
        self.failures.fetch_add(1, Ordering::AcqRel);
    }

    fn half_open(&self) {
        self.failures
            .store(BREAKER_THRESHOLD - 1, Ordering::Release);
    }

    fn tripped(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= BREAKER_THRESHOLD
    }

    fn request_answered(&self) {
        self.failures.store(0, Ordering::Release);
    }

    fn state(&self, now_ms: i64) -> BreakerState {
        match self.open_until_ms {
            None => BreakerState::Closed,
            Some(until_ms) if now_ms < until_ms => BreakerState::Open,
            Some(_) => BreakerState::Probe,
        }
    }

    /// After a round of requests: opens (again) or closes. True if it changed.
    fn settle(&mut self, policy: &RetryPolicy, now_ms: i64) -> bool {
        let failing = self.tripped();
        match (failing, self.open_until_ms.is_some()) {
            (true, _) => {
                self.trips += 1;
                let wait = policy.backoff(self.trips);
                self.open_until_ms = Some(now_ms + wait.as_millis() as i64);
                self.trips == 1
            }
            (false, true) => {
                self.open_until_ms = None;
                self.trips = 0;
                true
            }
            (false, false) => false,
        }
    }
}

const IDLE_WAIT: Duration = Duration::from_millis(100);

impl Delivery {
    pub fn spawn(self, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("weir-dest-{}", self.spec.name))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(destination = %self.spec.name, error = %e, "cannot start the delivery runtime");
                        return;
                    }
                };
                runtime.block_on(self.run(stop));
            })
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        let store = loop {
            match RetryStore::open(&self.store_dir, self.spec.retry_store_capacity) {
                Ok(s) => break s,
                Err(e) => {
                    tracing::error!(destination = %self.spec.name, error = %e, "cannot open the retry store; retrying");
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let limiter = self.spec.rate_limit.map(|(rps, burst)| {
            let rate = NonZeroU32::new(rps).unwrap_or(NonZeroU32::MIN);
            RateLimiter::direct(
                Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)),
            )
        });
        let mut replays = std::mem::replace(&mut self.replays, mpsc::channel(1).1);
        let d = &self;
        let mut w = Worker {
            d,
            sender: Sender::new(AllowList::new(&d.spec.allow_hosts), d.spec.timeout),
            limiter,
            store,
            labels: DeliveryLabels {
                destination: d.spec.name.clone(),
            },
            breaker: Breaker::default(),
        };
        let consumer = d.spec.consumer();
        let start = d
            .offsets
            .load(&consumer)
            .ok()
            .flatten()
            .unwrap_or(Offset(0))
            .max(d.log.oldest());
        let mut reader = d.log.reader(start);
        let sources: HashSet<&SourceId> = d.spec.sources.iter().collect();
        w.gauge_store();
        while !stop.load(Ordering::Acquire) {
            if let Ok(replay) = replays.try_recv() {
                let result = w.accept_replay(replay.letters);
                let _ = replay.done.send(result);
                continue;
            }
            let mut busy = match w.breaker.state(timestamp::now_ms()) {
                BreakerState::Closed => w.retry_due(false).await,
                BreakerState::Open => false,
                BreakerState::Probe => {
                    if w.store.is_empty() {
                        // Nothing held to probe with: the next new events are the probe.
                        w.breaker.request_answered();
                        w.settle_breaker();
                        false
                    } else {
                        // One failure short of tripped: the probe goes out, and its failure
                        // alone opens the breaker again.
                        w.breaker.half_open();
                        w.retry_due(true).await;
                        continue;
                    }
                }
            };
            if !w.store.is_full() && w.breaker.open_until_ms.is_none() {
                let batch = match reader.read_batch(d.spec.batch_size * d.spec.concurrency) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(destination = %d.spec.name, error = %e, "cannot read the processed log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Some(last) = batch.last().map(|r| r.offset) {
                    busy = true;
                    let mine: Vec<&crate::log::Record> = batch
                        .iter()
                        .filter(|r| {
                            r.meta.kind == RecordKind::Event && sources.contains(&r.meta.source)
                        })
                        .collect();
                    w.deliver_new(mine).await;
                    if let Err(e) = d.offsets.commit(&consumer, last.next()) {
                        tracing::warn!(destination = %d.spec.name, error = %e, "cannot commit the destination's offset");
                    }
                    d.metrics
                        .lag
                        .get_or_create(&w.labels)
                        .set(d.log.head().next.0.saturating_sub(last.next().0) as i64);
                }
            }
            if !busy {
                let next_due = match w.breaker.open_until_ms {
                    Some(until_ms) => Some(until_ms),
                    None => w.store.next_due_ms(),
                }
                .map(|t| Duration::from_millis((t - timestamp::now_ms()).max(0) as u64));
                let wait = next_due.map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT));
                let pos = reader.position();
                // New records wake the loop only if it may read them: paused or with a full
                // store it sleeps until something is due (the log is ahead of it then, and
                // waiting on the log would return at once and spin).
                let reading = !w.store.is_full() && w.breaker.open_until_ms.is_none();
                let log_moved = async {
                    if reading {
                        d.log.wait_beyond_async(pos).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    _ = tokio::time::timeout(wait, log_moved) => {}
                    replay = replays.recv() => {
                        if let Some(replay) = replay {
                            let result = w.accept_replay(replay.letters);
                            let _ = replay.done.send(result);
                        }
                    }
                }
            }
        }
    }
}

impl Worker<'_> {
    fn gauge_store(&self) {
        self.d
            .metrics
            .held
            .get_or_create(&self.labels)
            .set(self.store.len() as i64);
    }

    /// Puts dead letters back in line: each behind the events its key already has waiting.
    fn accept_replay(&mut self, letters: Vec<DeadLetter>) -> Result<usize, String> {
        let now = timestamp::now_ms();
        for l in &letters {
            let key = ordering_key(&l.event);
            self.store.hold(
                &key,
                &l.source,
                l.log_offset,
                l.event.clone(),
                0,
                0,
                now,
                "replayed",
            );
        }
        self.store
            .sync()
            .map_err(|e| format!("cannot write the retry store: {e}"))?;
        self.gauge_store();
        Ok(letters.len())
    }

    /// Opens or closes the breaker after a round of requests, and says so.
    fn settle_breaker(&mut self) {
        let was_open = self.breaker.open_until_ms.is_some();
        if self.breaker.settle(&self.d.spec.retry, timestamp::now_ms()) {
            let open = self.breaker.open_until_ms.is_some();
            self.d
                .metrics
                .paused
                .get_or_create(&self.labels)
                .set(i64::from(open));
            if open && !was_open {
                tracing::warn!(destination = %self.d.spec.name, failures = BREAKER_THRESHOLD, "destination is failing every request: pausing it, probing with one event at growing intervals");
            } else if !open {
                tracing::info!(destination = %self.d.spec.name, "destination answers again: resuming");
            }
        }
    }

    /// Puts a new event at the end of its key's queue in the retry store.
    fn hold(
        &mut self,
        item: &Item,
        attempts: u32,
        first_failed_ms: i64,
        next_ms: i64,
        error: &str,
    ) {
        let event = serde_json::from_slice(&item.payload).unwrap_or_default();
        self.store.hold(
            &item.key,
            &item.source,
            item.log_offset,
            event,
            attempts,
            first_failed_ms,
            next_ms,
            error,
        );
    }

    /// Sends what is due in the retry store (a `probe`: only its oldest event, due or not).
    /// True if anything was sent.
    async fn retry_due(&mut self, probe: bool) -> bool {
        let (now, limit) = if probe {
            (i64::MAX, 1)
        } else {
            (
                timestamp::now_ms(),
                self.d.spec.batch_size * self.d.spec.concurrency,
            )
        };
        let due = self
            .store
            .due(now, if probe { 1 } else { self.d.spec.batch_size });
        if due.is_empty() {
            return false;
        }
        let items: Vec<Item> = due
            .into_iter()
            .flatten()
            .take(limit)
            .map(|h: Held| Item {
                key: h.key,
                source: h.source,
                log_offset: h.log_offset,
                payload: serde_json::to_vec(&h.event).unwrap_or_default(),
                held: Some(h.id),
                attempts: h.attempts,
                first_failed_ms: h.first_failed_ms,
            })
            .collect();
        self.d
            .metrics
            .retried
            .get_or_create(&self.labels)
            .inc_by(items.len() as u64);
        let fates = self.deliver(items).await;
        self.settle(fates).await;
        true
    }

    /// New events from the log: through the chain, then to the destination; events of keys
    /// that have events waiting queue behind them.
    async fn deliver_new(&mut self, records: Vec<&crate::log::Record>) {
        let items: Vec<Item> = records
            .into_iter()
            .map(|r| Item {
                key: r.meta.ordering_key.clone(),
                source: r.meta.source.as_str().to_owned(),
                log_offset: r.offset.0,
                payload: r.payload.to_vec(),
                held: None,
                attempts: 0,
                first_failed_ms: 0,
            })
            .collect();
        let chain = self.d.chain.clone();
        let name = self.d.spec.name.clone();
        let (items, mut dead, filtered) = if chain.is_empty() {
            (items, Vec::new(), 0)
        } else {
            off_runtime(move || run_chain(&name, &chain, items)).await
        };
        if filtered > 0 {
            self.d
                .metrics
                .filtered
                .get_or_create(&self.labels)
                .inc_by(filtered);
        }
        let mut send = Vec::with_capacity(items.len());
        let now = timestamp::now_ms();
        for item in items {
            if self.store.is_blocked(&item.key) {
                self.hold(&item, 0, 0, now, "");
            } else {
                send.push(item);
            }
        }
        let mut fates = self.deliver(send).await;
        fates.extend(dead.drain(..).map(|(item, e)| (item, Fate::Dead(e))));
        self.settle(fates).await;
    }

    /// Delivers items in lanes (a key always in the same lane, in order).
    async fn deliver(&self, items: Vec<Item>) -> Vec<(Item, Fate)> {
        if items.is_empty() {
            return Vec::new();
        }
        let lanes_n = self.d.spec.concurrency.max(1);
        let mut lanes: Vec<Vec<Item>> = (0..lanes_n).map(|_| Vec::new()).collect();
        for item in items {
            let lane = (xxhash_rust::xxh3::xxh3_64(item.key.as_bytes()) as usize) % lanes_n;
            lanes[lane].push(item);
        }
        let version = self.d.plugin.active();
        let runs = lanes
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|lane| self.deliver_lane(version.clone(), lane));
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn deliver_lane(
        &self,
        version: Arc<LoadedVersion>,
        lane: Vec<Item>,
    ) -> Vec<(Item, Fate)> {
        let mut out = Vec::with_capacity(lane.len());
        let mut failed_keys: HashSet<String> = HashSet::new();
        let mut rest = lane.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Item> = rest.by_ref().take(self.d.spec.batch_size.max(1)).collect();
            let (chunk, behind): (Vec<Item>, Vec<Item>) = chunk
                .into_iter()
                .partition(|i| !failed_keys.contains(&i.key));
            out.extend(behind.into_iter().map(|i| (i, held_behind())));
            let events: Vec<Event> = chunk.iter().map(event_of).collect();
            let (requests, mut fates) = off_runtime({
                let version = version.clone();
                let name = self.d.spec.name.clone();
                move || build(&name, &version, &events)
            })
            .await;
            for req in requests {
                let idx: Vec<usize> = req.events.iter().map(|i| *i as usize).collect();
                if idx.iter().any(|i| failed_keys.contains(&chunk[*i].key)) {
                    for i in idx {
                        fates[i] = Some(held_behind());
                    }
                    continue;
                }
                if self.breaker.tripped() {
                    // The destination failed the last requests in a row: the rest of this
                    // round waits in the retry store for the breaker's probe.
                    for i in idx {
                        fates[i] = Some(Fate::Retry {
                            after: None,
                            error: "destination paused: its last requests all failed".into(),
                            attempted: false,
                        });
                    }
                    continue;
                }
                if let Some(l) = &self.limiter {
                    l.until_ready().await;
                }
                // Cloned: a family guard held across an await would block other lanes (and, with a
                // writer waiting, other destinations).
                let in_flight = self.d.metrics.in_flight.get_or_create(&self.labels).clone();
                in_flight.inc();
                let started = Instant::now();
                let answer = self.sender.send(&req).await;
                in_flight.dec();
                self.d
                    .metrics
                    .latency
                    .get_or_create(&self.labels)
                    .observe(started.elapsed().as_secs_f64());
                let verdicts = match answer {
                    Err(SendError::Refused(reason)) => vec![Fate::Dead(reason); idx.len()],
                    Err(SendError::Failed(error)) => vec![retry(None, &error); idx.len()],
                    Ok(resp) => {
                        let status = resp.status;
                        let version = version.clone();
                        let req = req.clone();
                        match off_runtime(move || version.classify(&req, &resp)).await {
                            Ok(v) => fates_of(v, idx.len(), status),
                            Err(e) => {
                                vec![retry(None, &format!("classify failed: {e}")); idx.len()]
                            }
                        }
                    }
                };
                if verdicts.iter().all(|f| matches!(f, Fate::Retry { .. })) {
                    self.breaker.request_failed();
                } else {
                    self.breaker.request_answered();
                }
                for (i, fate) in idx.into_iter().zip(verdicts) {
                    if matches!(fate, Fate::Retry { .. }) {
                        failed_keys.insert(chunk[i].key.clone());
                    }
                    fates[i] = Some(fate);
                }
            }
            for (item, fate) in chunk.into_iter().zip(fates) {
                let fate = fate.unwrap_or_else(|| {
                    Fate::Dead(format!("{}: no request covered this event", version.plugin))
                });
                out.push((item, fate));
            }
        }
        out
    }

    /// Records the fates: delivered ones leave the store, failed ones are held (or retried
    /// later), given-up ones go to the dead-letter queue. Durable before returning.
    async fn settle(&mut self, fates: Vec<(Item, Fate)>) {
        let now = timestamp::now_ms();
        let policy = self.d.spec.retry;
        let mut dead = Vec::new();
        let m = &self.d.metrics;
        for (item, fate) in fates {
            match fate {
                Fate::Delivered => {
                    m.delivered.get_or_create(&self.labels).inc();
                    if let Some(id) = item.held {
                        self.store.remove(id);
                    }
                }
                Fate::Dead(reason) => {
                    m.dropped.get_or_create(&self.labels).inc();
                    dead.push(self.letter(&item, &reason));
                    if let Some(id) = item.held {
                        self.store.remove(id);
                    }
                }
                Fate::Retry {
                    after,
                    error,
                    attempted,
                } => {
                    let attempts = item.attempts + u32::from(attempted);
                    let first = if item.first_failed_ms == 0 && attempted {
                        now
                    } else {
                        item.first_failed_ms
                    };
                    let too_old = first > 0 && now - first >= policy.max_age.as_millis() as i64;
                    if attempts >= policy.max_attempts || too_old {
                        let reason = format!("gave up after {attempts} attempt(s): {error}");
                        dead.push(self.letter(&item, &reason));
                        if let Some(id) = item.held {
                            self.store.remove(id);
                        }
                        continue;
                    }
                    let delay = if attempted {
                        after.unwrap_or_else(|| policy.backoff(attempts))
                    } else {
                        Duration::ZERO
                    };
                    let next = now + delay.as_millis() as i64;
                    match item.held {
                        Some(id) => self.store.update(id, attempts, first, next, &error),
                        None => self.hold(&item, attempts, first, next, &error),
                    }
                }
            }
        }
        // Dead letters and held events are durable before the log position moves past them.
        let n_dead = dead.len() as u64;
        let dead = Arc::new(dead);
        loop {
            let (dlq, letters) = (self.d.dlq.clone(), dead.clone());
            let pushed = off_runtime(move || dlq.push_blocking(&letters)).await;
            let synced = self.store.sync();
            match (pushed, synced) {
                (Ok(()), Ok(())) => break,
                (p, s) => {
                    tracing::error!(destination = %self.d.spec.name, dlq = ?p.err(), store = ?s.err(), "cannot persist delivery state; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if n_dead > 0 {
            m.dead_lettered.get_or_create(&self.labels).inc_by(n_dead);
        }
        self.gauge_store();
        self.settle_breaker();
    }

    fn letter(&self, item: &Item, error: &str) -> DeadLetter {
        let version = self.d.plugin.active();
        DeadLetter {
            stage: self.d.spec.stage(),
            source: item.source.clone(),
            plugin: Some(version.plugin.clone()),
            version: Some(version.version.to_string()),
            error: error.to_owned(),
            failed_at: timestamp::format(timestamp::now()),
            log_offset: item.log_offset,
            event: serde_json::from_slice(&item.payload).unwrap_or_default(),
        }
    }
}

/// `build` with fault isolation: a failed call is redone one event at a time, so a plugin that
/// traps on one event dead-letters only that event. Returns the requests and, per event, its
/// fate when it has one already (rejected, or not covered).
fn build(
    destination: &str,
    version: &LoadedVersion,
    events: &[Event],
) -> (Vec<Request>, Vec<Option<Fate>>) {
    let mut fates: Vec<Option<Fate>> = (0..events.len()).map(|_| None).collect();
    let mut requests = Vec::new();
    match version.build(events) {
        Ok(out) => {
            for r in out.rejections {
                if let Some(f) = fates.get_mut(r.index as usize) {
                    *f = Some(Fate::Dead(r.reason));
                }
            }
            requests = covered(out.requests, events.len(), &fates, &version.plugin);
        }
        Err(e) => {
            tracing::warn!(destination, plugin = %version.plugin, error = %e, "build failed; building one event at a time");
            for (i, event) in events.iter().enumerate() {
                match version.build(std::slice::from_ref(event)) {
                    Ok(out) => {
                        if let Some(r) = out.rejections.into_iter().next() {
                            fates[i] = Some(Fate::Dead(r.reason));
                            continue;
                        }
                        for mut req in out.requests {
                            if !req.events.is_empty() && req.events.iter().all(|x| *x == 0) {
                                req.events = vec![i as u32];
                                requests.push(req);
                            }
                        }
                    }
                    Err(e) => fates[i] = Some(Fate::Dead(build_error(&e))),
                }
            }
        }
    }
    (requests, fates)
}

/// Runs plugin work on a blocking thread: plugin calls must not run on the thread that drives
/// the async runtime (WASI's synchronous streams block on it).
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The destination's own chain (transformers and filters); returns the items that go on and
/// the ones a plugin failed on.
/// Runs the destination's own chain. Returns the events to send, the ones a plugin failed on
/// (for the DLQ), and how many a filter dropped on purpose (counted, and logged at debug with
/// their reason: a dropped event is not sent to this destination and needs no replay).
fn run_chain(
    destination: &str,
    chain: &[Arc<PluginSlot>],
    mut items: Vec<Item>,
) -> (Vec<Item>, Vec<(Item, String)>, u64) {
    let mut dead = Vec::new();
    let mut dropped = 0;
    for slot in chain {
        if items.is_empty() {
            break;
        }
        let version = slot.active();
        let events: Vec<Event> = items.iter().map(event_of).collect();
        let results = run_isolated(&version, &events);
        let mut next = Vec::with_capacity(items.len());
        let mut failed = 0;
        for (mut item, result) in items.into_iter().zip(results) {
            let error = match result {
                EventResult::Outcome(Outcome::Keep(payload)) => {
                    match check_kept(&item.payload, &payload) {
                        Ok(()) => {
                            item.payload = payload;
                            next.push(item);
                            continue;
                        }
                        Err(e) => format!("{}: keep: {e}", version.plugin),
                    }
                }
                EventResult::Outcome(Outcome::Drop(reason)) => {
                    dropped += 1;
                    tracing::debug!(destination, plugin = %version.plugin, log_offset = item.log_offset, %reason, "dropped by the destination's chain");
                    continue;
                }
                EventResult::Outcome(Outcome::Fail(e)) | EventResult::Failed(e) => e,
                EventResult::Outcome(Outcome::Expand(_)) => format!(
                    "{}: expand is not supported in a destination's chain",
                    version.plugin
                ),
            };
            failed += 1;
            dead.push((item, error));
        }
        slot.report(&version, events.len() as u64, failed);
        items = next;
    }
    (items, dead, dropped)
}

fn event_of(item: &Item) -> Event {
    Event {
        payload: item.payload.clone(),
        source: item.source.clone(),
        offset: item.log_offset,
    }
}

fn held_behind() -> Fate {
    Fate::Retry {
        after: None,
        error: "held behind an earlier event of the same key".into(),
        attempted: false,
    }
}

fn retry(after: Option<Duration>, error: &str) -> Fate {
    Fate::Retry {
        after,
        error: error.to_owned(),
        attempted: true,
    }
}

fn build_error(e: &CallError) -> String {
    format!("build failed: {e}")
}

/// Keeps the requests whose event indexes are valid and not claimed yet; events covered by none
/// and not rejected are a plugin bug, dead-lettered by the caller.
fn covered(requests: Vec<Request>, n: usize, fates: &[Option<Fate>], plugin: &str) -> Vec<Request> {
    let mut claimed = vec![false; n];
    for (i, f) in fates.iter().enumerate() {
        claimed[i] = f.is_some();
    }
    let mut out = Vec::with_capacity(requests.len());
    for mut req in requests {
        req.events.retain(|i| {
            let i = *i as usize;
            if i < n && !claimed[i] {
                claimed[i] = true;
                true
            } else {
                tracing::warn!(
                    plugin,
                    index = i,
                    "a request claims an event it may not; ignored"
                );
                false
            }
        });
        if !req.events.is_empty() {
            out.push(req);
        }
    }
    out
}

/// One fate per event of a request from the plugin's verdict.
fn fates_of(v: Verdict, n: usize, status: u16) -> Vec<Fate> {
    match v {
        Verdict::Done => (0..n).map(|_| Fate::Delivered).collect(),
        Verdict::Retry(ms) => {
            let error = format!("HTTP {status}; the destination asked for a retry");
            (0..n)
                .map(|_| retry(ms.map(Duration::from_millis), &error))
                .collect()
        }
        Verdict::Drop(reason) => (0..n)
            .map(|_| Fate::Dead(format!("HTTP {status}: {reason}")))
            .collect(),
        Verdict::PerEvent(list) if list.len() == n => list
            .into_iter()
            .map(|v| match v {
                EventVerdict::Done => Fate::Delivered,
                EventVerdict::Retry => {
                    retry(None, &format!("HTTP {status}; this event is to be retried"))
                }
                EventVerdict::Drop(reason) => Fate::Dead(format!("HTTP {status}: {reason}")),
            })
            .collect(),
        Verdict::PerEvent(list) => {
            let error = format!("classify returned {} verdicts for {n} events", list.len());
            (0..n).map(|_| retry(None, &error)).collect()
        }
    }
}

/// The ordering key of an event's JSON: `anonymousId`, else `userId`.
fn ordering_key(event: &serde_json::Value) -> String {
    let id = |k: &str| match &event[k] {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    id("anonymousId")
        .or_else(|| id("userId"))
        .unwrap_or_default()
}

/// Checks at start-up that a destination's plugin is a destination.
pub fn check_plugin(slot: &PluginSlot) -> Result<(), String> {
    let kind = slot.active().kind;
    if kind == PluginKind::Destination {
        Ok(())
    } else {
        Err(format!(
            "plugin `{}` is a {kind}; a destination needs a destination plugin",
            slot.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        for (attempts, base) in [(1, 100), (2, 200), (3, 400), (10, 1000)] {
            let d = p.backoff(attempts).as_millis() as u64;
            assert!((base / 2..=base).contains(&d), "attempt {attempts}: {d} ms");
        }
    }
}
