//! The ingest gateway: the HTTP API the Segment and RudderStack SDKs send to.
//!
//! Guarantees:
//! - `200` only once every event of the request is durable in the log (or is a duplicate of an
//!   event that is);
//! - one bad event never costs the others: inside a batch an invalid or oversize event is stored
//!   as an `invalid` record with its reason and the rest is accepted;
//! - every error answer is JSON `{"code", "message"}`, with `Retry-After` on 429 and 503;
//! - work per request is bounded: body size, decoded size, events per request.

mod body;
pub mod error;
pub mod normalize;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::value::RawValue;

use crate::config::{Config, Limits, SourceConfig};
use crate::dedupe::{self, DedupeIndex, Seen, Ticket};
use crate::event::{RawObject, json_string};
use crate::ids::{SourceId, WriteKey};
use crate::log::{Appender, RecordKind, RecordMeta, record};
use crate::telemetry::{ErrorLabels, EventLabels, GatewayMetrics, RouteLabels, SourceLabels};
use crate::timestamp;
use error::ApiError;
use normalize::{RequestContext, normalize};
pub use routes::Route;

/// How long a duplicate waits for its original's append before giving up with 503.
const DUPLICATE_WAIT: Duration = Duration::from_secs(30);

/// A source as the gateway sees it.
pub struct SourceState {
    pub id: SourceId,
    limiter: Option<DefaultDirectRateLimiter>,
    pub dedupe: Arc<DedupeIndex>,
}

impl SourceState {
    pub fn new(config: &SourceConfig, dedupe: Arc<DedupeIndex>) -> Self {
        let limiter = config.rate_limit.map(|rl| {
            let rate = NonZeroU32::new(rl.events_per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rl.burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        SourceState {
            id: config.id.clone(),
            limiter,
            dedupe,
        }
    }
}

/// Shared state of the ingest listener.
pub struct Gateway {
    keys: HashMap<WriteKey, Arc<SourceState>>,
    limits: Limits,
    appender: Appender,
    metrics: GatewayMetrics,
    draining: AtomicBool,
}

/// Answer for a successful ingest, as Segment's API answers.
const SUCCESS: &str = r#"{"success":true}"#;

impl Gateway {
    pub fn new(
        config: &Config,
        sources: &HashMap<SourceId, Arc<SourceState>>,
        appender: Appender,
        metrics: GatewayMetrics,
    ) -> Self {
        let keys = config
            .sources
            .iter()
            .flat_map(|s| {
                let state = sources.get(&s.id).cloned();
                s.write_keys
                    .iter()
                    .filter_map(move |k| state.clone().map(|st| (k.clone(), st)))
            })
            .collect();
        Gateway {
            keys,
            limits: config.limits.clone(),
            appender,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on readiness fails and new ingest requests get 503, while in-flight ones finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Handles one request of the ingest listener.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let path = req.uri().path().to_owned();
        let route = Route::parse(&path);
        let result = match route {
            None => Err(ApiError::not_found(&path)),
            Some(r) => self.dispatch(r, req, peer).await,
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                self.metrics
                    .errors
                    .get_or_create(&ErrorLabels { code: e.code })
                    .inc();
                if e.status.is_server_error() {
                    tracing::warn!(code = e.code, message = %e.message, %path, "request failed");
                } else {
                    tracing::debug!(code = e.code, message = %e.message, %path, "request refused");
                }
                e.to_response()
            }
        };
        if let Some(origin) = origin {
            cors(resp.headers_mut(), origin);
        }
        let route_name = route.map_or("unknown", Route::name);
        self.metrics
            .requests
            .get_or_create(&RouteLabels {
                route: route_name,
                status: resp.status().as_u16(),
            })
            .inc();
        if resp.status() == StatusCode::OK && !route.is_some_and(Route::is_health) {
            self.metrics
                .ack_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        resp
    }

    async fn dispatch(
        &self,
        route: Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let method = req.method().clone();
        if route.is_health() {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::method_not_allowed(
                    &method,
                    req.uri().path(),
                    "GET",
                ));
            }
            return self.health(route);
        }
        if method == Method::OPTIONS {
            // CORS preflight; the headers are added by `handle`.
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            return Ok(resp);
        }
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(
                &method,
                req.uri().path(),
                "POST",
            ));
        }
        if route == Route::SdkMetrics {
            // analytics.js reports its own metrics here; they are not events.
            return Ok(json_ok(SUCCESS));
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "weir is shutting down; retry against another instance or in a moment",
            )
            .retry_after(Duration::from_secs(5)));
        }
        self.ingest(route, req, peer).await
    }

    fn health(&self, route: Route) -> Result<Response<Full<Bytes>>, ApiError> {
        if route == Route::Live {
            return Ok(json_ok(r#"{"status":"live"}"#));
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "shutting down",
            ));
        }
        match self.appender.accepting(0) {
            Ok(()) => Ok(json_ok(r#"{"status":"ready"}"#)),
            Err(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                e.to_string(),
            )),
        }
    }

    fn source_for(&self, key: Option<&str>) -> Result<&Arc<SourceState>, ApiError> {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(ApiError::unauthorized(
                "no write key: send it as the HTTP Basic user name (empty password) or as `writeKey` in the body",
            ));
        };
        self.keys.get(&WriteKey::new(key)).ok_or_else(|| {
            ApiError::unauthorized("unknown write key: check the source's write_keys in weir.toml")
        })
    }

    async fn ingest(
        &self,
        route: Route,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let (parts, body) = req.into_parts();
        let header_key = basic_auth_user(&parts.headers)?;
        // Refuse a wrong key before reading a body we would throw away.
        if let Some(k) = &header_key {
            self.source_for(Some(k))?;
        }
        let body = body::read(&parts.headers, body, self.limits.max_request_bytes).await?;
        let text = std::str::from_utf8(&body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("the body is not UTF-8 text: {e}"))
        })?;
        let fields = match route {
            Route::Batch | Route::Import => Envelope::batch(text)?,
            _ => Envelope::single(text)?,
        };
        let body_key = fields.write_key();
        let source = self.source_for(header_key.as_deref().or(body_key.as_deref()))?;
        let events = fields.events;
        let mut parsed = fields.single;
        if events.len() > self.limits.max_batch_events {
            return Err(ApiError::too_large(format!(
                "the batch has {} events, over the limit of {} per request; send smaller batches",
                events.len(),
                self.limits.max_batch_events
            )));
        }
        if let Some(limiter) = &source.limiter
            && let Some(n) = NonZeroU32::new(events.len() as u32)
        {
            match limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!(
                            "source `{}` is over its rate limit; retry after the Retry-After delay",
                            source.id
                        ),
                    )
                    .retry_after(wait.max(Duration::from_millis(1))));
                }
                Err(_) => {
                    // Config validation makes burst >= max_batch_events, so this is only
                    // reachable if that check is bypassed; answer as a limit, not a panic.
                    return Err(ApiError::too_large(
                        "the batch is larger than the source's rate-limit burst",
                    ));
                }
            }
        }
        let label = SourceLabels {
            source: source.id.as_str().to_owned(),
        };
        self.metrics
            .bytes
            .get_or_create(&label)
            .inc_by(body.len() as u64);

        let received_at = timestamp::now();
        let ctx = RequestContext {
            source: &source.id,
            received_at,
            received_at_json: json_string(&timestamp::format(received_at)),
            batch_sent_at: fields.sent_at.filter(|s| *s != "null").map(str::to_owned),
            peer_ip_json: json_string(&peer.ip().to_string()),
            import: route == Route::Import,
            max_event_bytes: self.limits.max_event_bytes,
        };
        let now_ms = timestamp::unix_ms(received_at);
        let single = matches!(route, Route::Single(_));
        let forced = match route {
            Route::Single(t) => Some(t),
            _ => None,
        };

        let ticket = Ticket::default();
        let mut records = Vec::with_capacity(events.len());
        let mut reserved = Vec::with_capacity(events.len());
        let mut waits = Vec::new();
        let (mut invalid, mut duplicates) = (0u64, 0u64);
        for (i, raw) in events.iter().enumerate() {
            let at = if single {
                String::new()
            } else {
                format!("batch[{i}]")
            };
            let prepared = match parsed.take() {
                Some(obj) => normalize::check_size(&ctx, raw, &at)
                    .and_then(|()| normalize::normalize_parsed(&ctx, raw, obj, forced, &at)),
                None => normalize(&ctx, raw, forced, &at),
            };
            match prepared {
                Ok(p) => match source.dedupe.check(p.meta.dedupe_key, now_ms, &ticket) {
                    Seen::New => {
                        reserved.push(p.meta.dedupe_key);
                        records.push(record::encode(&p.meta, &p.payload));
                    }
                    Seen::Durable => duplicates += 1,
                    Seen::Pending(rx) => {
                        duplicates += 1;
                        waits.push(rx);
                    }
                },
                Err(reason) if single => {
                    return Err(ApiError::bad_request("invalid_event", reason));
                }
                Err(reason) => {
                    invalid += 1;
                    let meta = RecordMeta {
                        kind: RecordKind::Invalid,
                        event_type: crate::log::EventType::Unknown,
                        received_at_ms: now_ms,
                        source: source.id.clone(),
                        event_name: String::new(),
                        ordering_key: String::new(),
                        dedupe_key: 0,
                        origin: None,
                    };
                    records.push(record::encode(
                        &meta,
                        &normalize::invalid_payload(&reason, raw),
                    ));
                }
            }
        }

        let accepted = reserved.len() as u64;
        if !records.is_empty() {
            // The append and the settling of the reserved ids run on their own task: if the
            // client goes away mid-request, duplicates waiting on these ids still get an answer
            // that matches what is in the log.
            let appender = self.appender.clone();
            let index = source.dedupe.clone();
            let outcome = tokio::spawn(async move {
                let result = appender.append(records).await;
                index.complete(&reserved, ticket, result.is_ok(), now_ms);
                result
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("storing the events failed: {e}"),
                )
            })?;
            outcome?;
        }
        for rx in waits {
            let durable = tokio::time::timeout(DUPLICATE_WAIT, dedupe::wait_original(rx))
                .await
                .unwrap_or(false);
            if !durable {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "duplicate_unresolved",
                    "an earlier copy of an event in this request could not be stored; retry",
                )
                .retry_after(Duration::from_secs(1)));
            }
        }
        let count = |result: &'static str, n: u64| {
            if n > 0 {
                self.metrics
                    .events
                    .get_or_create(&EventLabels {
                        source: label.source.clone(),
                        result,
                    })
                    .inc_by(n);
            }
        };
        count("accepted", accepted);
        count("invalid", invalid);
        count("duplicate", duplicates);
        if duplicates > 0 {
            self.metrics
                .dedupe_hits
                .get_or_create(&label)
                .inc_by(duplicates);
        }
        Ok(json_ok(SUCCESS))
    }
}

/// What the gateway needs from a request body: its events (raw JSON) and the top-level
/// `writeKey` and `sentAt`.
struct Envelope<'a> {
    events: Vec<&'a str>,
    write_key: Option<&'a str>,
    sent_at: Option<&'a str>,
    /// A single-event body is its event: parsed once, here, and handed to `normalize`.
    single: Option<RawObject<'a>>,
}

/// `{"batch": [...], "writeKey": ..., "sentAt": ...}` read in one pass: each event's JSON is
/// checked once here and parsed once by `normalize`. Other fields are skipped.
#[derive(serde::Deserialize)]
struct BatchEnvelope<'a> {
    #[serde(borrow)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(borrow, rename = "writeKey")]
    write_key: Option<&'a RawValue>,
    #[serde(borrow, rename = "sentAt")]
    sent_at: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    fn batch(text: &'a str) -> Result<Envelope<'a>, ApiError> {
        let fields = match serde_json::from_str::<BatchEnvelope<'a>>(text) {
            Ok(f) => f,
            // Not a plain batch body (not an object, `batch` not an array, a field twice...):
            // the field-by-field reading says exactly what is wrong.
            Err(_) => return Self::batch_slowly(text),
        };
        let Some(batch) = fields.batch else {
            return Self::batch_slowly(text);
        };
        Ok(Envelope {
            events: batch.into_iter().map(RawValue::get).collect(),
            write_key: fields.write_key.map(RawValue::get),
            sent_at: fields.sent_at.map(RawValue::get),
            single: None,
        })
    }

    fn batch_slowly(text: &'a str) -> Result<Envelope<'a>, ApiError> {
        let top = parse_top(text)?;
        let raw = top.get_parsed("batch").ok_or_else(missing_batch)?;
        let events = serde_json::from_str::<Vec<&RawValue>>(raw)
            .map_err(|_| {
                ApiError::bad_request("invalid_batch", "batch: must be an array of events")
            })?
            .into_iter()
            .map(RawValue::get)
            .collect();
        Ok(Envelope {
            events,
            write_key: top.get_parsed("writeKey"),
            sent_at: top.get_parsed("sentAt"),
            single: None,
        })
    }

    fn single(text: &'a str) -> Result<Envelope<'a>, ApiError> {
        let top = parse_top(text)?;
        Ok(Envelope {
            events: vec![text],
            write_key: top.get_parsed("writeKey"),
            sent_at: top.get_parsed("sentAt"),
            single: Some(top),
        })
    }

    /// `writeKey` if it is a string.
    fn write_key(&self) -> Option<String> {
        self.write_key
            .filter(|raw| raw.starts_with('"'))
            .and_then(|raw| serde_json::from_str(raw).ok())
    }
}

fn parse_top(text: &str) -> Result<RawObject<'_>, ApiError> {
    RawObject::parse(text).map_err(|e| {
        if serde_json::from_str::<&RawValue>(text).is_ok() {
            ApiError::bad_request("invalid_json", "the body must be a JSON object")
        } else {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
        }
    })
}

fn missing_batch() -> ApiError {
    ApiError::bad_request(
        "invalid_batch",
        "batch: missing; the body must be {\"batch\": [events...]}",
    )
}

fn json_ok(body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The write key from `Authorization: Basic base64(key:)`, if that header is present.
fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::unauthorized(
            "malformed Authorization header: use Basic auth with the write key as user name and an empty password",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(bad());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = decoded.split(':').next().unwrap_or_default();
    Ok(Some(user.to_owned()))
}

/// Browsers: allow the headers the SDKs send (analytics.js sends `Authorization` since 1.84 and
/// `X-Retry-Count` on retries) and let them read `Retry-After`.
fn cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Content-Encoding, X-Retry-Count"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}
