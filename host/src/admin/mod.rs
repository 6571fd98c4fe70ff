//! The admin listener (default `127.0.0.1:8081`, never the ingest address): `/metrics` for
//! Prometheus, and the admin API under `/admin/`, which needs `Authorization: Bearer <token>`.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/plugins` | every plugin, its live version and the versions kept |
//! | `POST /admin/plugins/{name}/deploy` | `{"component_base64"?, "config"?}`: a new version, live once it passed `init` and fixtures |
//! | `POST /admin/plugins/{name}/activate` | `{"version": "3fa9c2d1-77b0e4aa"}`: make a kept version live |
//! | `POST /admin/plugins/{name}/rollback` | back to the version live before |
//! | `GET /admin/dlq/{queue}` | dead-lettered events not yet replayed |
//! | `POST /admin/dlq/{queue}/replay` | send them through their stage again, in order |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::delivery::Replay;
use crate::dlq::{DeadLetter, Dlq};
use crate::event::{Header, RawObject};
use crate::gateway::error::ApiError;
use crate::ids::SourceId;
use crate::log::{Appender, RecordKind, record};
use crate::plugin::PluginError;
use crate::plugin::registry::{Origin, Registry};
use crate::telemetry::Metrics;
use crate::timestamp;

/// Admin request bodies carry whole components (a JavaScript one is ~12 MB, base64 adds a third).
const MAX_ADMIN_BODY: usize = 64 << 20;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub token: String,
    pub registry: Arc<Registry>,
    pub dlqs: HashMap<String, Arc<Dlq>>,
    /// Where replays of the pipeline's dead letters go: the raw log.
    pub raw: Appender,
    /// Where replays of a destination's dead letters go: its delivery engine.
    pub deliveries: HashMap<String, tokio::sync::mpsc::Sender<Replay>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    component_base64: Option<String>,
    config: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn plugin_error(e: PluginError) -> ApiError {
    match e {
        PluginError::Unknown(_) | PluginError::UnknownVersion { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_rejected",
            format!("{other}; the live version keeps serving"),
        ),
    }
}

impl Admin {
    pub async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if path == "/metrics" {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(&method, &path, "GET"));
            }
            let mut resp = Response::new(Full::new(Bytes::from(self.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Ok(resp);
        }
        let Some(rest) = path.strip_prefix("/admin/") else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no route {path} on the admin listener; metrics are at /metrics, the API under /admin/"
                ),
            ));
        };
        self.authorize(&req)?;
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match (method.clone(), parts.as_slice()) {
            (Method::GET, ["plugins"]) => Ok(json_response(
                StatusCode::OK,
                json!({ "plugins": self.registry.list() }),
            )),
            (Method::POST, ["plugins", name, "deploy"]) => {
                let name = (*name).to_owned();
                let body: DeployBody = read_json(req).await?;
                self.deploy(&name, body).await
            }
            (Method::POST, ["plugins", name, "activate"]) => {
                let name = (*name).to_owned();
                let body: ActivateBody = read_json(req).await?;
                let slot = self.registry.get(&name).map_err(plugin_error)?.clone();
                let v = blocking(move || slot.activate(&body.version)).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({"plugin": name, "active": v.version.to_string()}),
                ))
            }
            (Method::POST, ["plugins", name, "rollback"]) => {
                let name = (*name).to_owned();
                let slot = self.registry.get(&name).map_err(plugin_error)?.clone();
                let v = blocking(move || slot.rollback()).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({"plugin": name, "active": v.version.to_string()}),
                ))
            }
            (Method::GET, ["dlq", queue]) => {
                let dlq = self.dlq(queue)?;
                let entries = blocking(move || dlq.entries()).await?;
                Ok(json_response(
                    StatusCode::OK,
                    json!({"queue": queue, "entries": entries}),
                ))
            }
            (Method::POST, ["dlq", queue, "replay"]) => {
                let dlq = self.dlq(queue)?;
                let query = req.uri().query().unwrap_or_default().to_owned();
                self.replay(dlq, &query).await
            }
            (m, _) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin route {m} {path}"),
            )),
        }
    }

    fn dlq(&self, queue: &str) -> Result<Arc<Dlq>, ApiError> {
        self.dlqs.get(queue).cloned().ok_or_else(|| {
            let mut known: Vec<&String> = self.dlqs.keys().collect();
            known.sort();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead-letter queue `{queue}`; queues: {known:?}"),
            )
        })
    }

    async fn deploy(
        &self,
        name: &str,
        body: DeployBody,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let slot = self.registry.get(name).map_err(plugin_error)?.clone();
        let bytes = match body.component_base64 {
            Some(b64) => Some(Arc::<[u8]>::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| {
                        ApiError::bad_request(
                            "invalid_component",
                            format!("component_base64: not base64: {e}"),
                        )
                    })?,
            )),
            None => None,
        };
        let config = body.config.map(|c| c.to_string());
        if bytes.is_none() && config.is_none() {
            return Err(ApiError::bad_request(
                "nothing_to_deploy",
                "give component_base64, config, or both",
            ));
        }
        let v = blocking(move || slot.deploy(bytes, config, Origin::Admin)).await?;
        Ok(json_response(
            StatusCode::OK,
            json!({"plugin": name, "active": v.version.to_string(), "kind": v.kind}),
        ))
    }

    /// Sends a queue's entries through their stage again, oldest first: the pipeline's into the
    /// raw log, a destination's into its delivery (behind the events their keys have waiting).
    /// `limit=N` replays at most N entries per call (the CLI calls again, showing progress);
    /// `since=T` replays only entries dead-lettered at or after T, the older ones stay queued.
    async fn replay(&self, dlq: Arc<Dlq>, query: &str) -> Result<Response<Full<Bytes>>, ApiError> {
        let mut limit = usize::MAX;
        let mut since = None;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "limit" => {
                    limit = v.parse().map_err(|_| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("limit: `{v}` is not a number"),
                        )
                    })?
                }
                "since" => {
                    let v = v.replace("%3A", ":").replace("%2B", "+");
                    since = Some(timestamp::parse(&v).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_query",
                            format!("since: `{v}` is not an ISO-8601 date-time"),
                        )
                    })?);
                }
                _ => {}
            }
        }
        let reader = dlq.clone();
        let all = blocking(move || reader.entries()).await?;
        let total = all.len();
        let batch: Vec<_> = all.into_iter().take(limit.max(1)).collect();
        let Some(last) = batch.last().map(|e| e.id) else {
            return Ok(json_response(
                StatusCode::OK,
                json!({"replayed": 0, "kept": 0, "remaining": 0}),
            ));
        };
        let (replay, keep): (Vec<DeadLetter>, Vec<DeadLetter>) = batch
            .iter()
            .map(|e| e.letter.clone())
            .partition(|l| match since {
                Some(t) => timestamp::parse(&l.failed_at).is_none_or(|at| at >= t),
                None => true,
            });
        let n = replay.len();
        if dlq.name == crate::pipeline::DLQ {
            self.replay_into_raw(&replay).await?;
        } else if let Some(tx) = self.deliveries.get(&dlq.name) {
            let (done, rx) = tokio::sync::oneshot::channel();
            tx.send(Replay {
                letters: replay,
                done,
            })
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the destination is stopping",
                )
            })?;
            rx.await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the destination is stopping",
                    )
                })?
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e)
                })?;
        } else {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                format!("replay of `{}` is not supported yet", dlq.name),
            ));
        }
        // At least once: the entries are cleared only once their events are safe again; the
        // ones `since` skipped go back at the end of the queue first.
        let kept = keep.len();
        let clearer = dlq.clone();
        blocking(move || {
            clearer.push_blocking(&keep).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    e.to_string(),
                )
            })?;
            clearer
                .clear_before(crate::ids::Offset(last + 1))
                .map_err(ApiError::from)
        })
        .await?;
        tracing::info!(queue = %dlq.name, events = n, kept, "replayed dead letters");
        Ok(json_response(
            StatusCode::OK,
            json!({"replayed": n, "kept": kept, "remaining": total - batch.len() + kept}),
        ))
    }

    async fn replay_into_raw(&self, letters: &[DeadLetter]) -> Result<(), ApiError> {
        let now = timestamp::now_ms();
        let records = letters
            .iter()
            .map(|l| {
                let json = l.event.to_string();
                let header = RawObject::parse(&json)
                    .map(|o| Header::of(&o))
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "invalid_entry",
                            "a dead letter holds no JSON object",
                        )
                    })?;
                let meta =
                    header.record_meta(RecordKind::Event, SourceId::new(&l.source), now, None);
                Ok(record::encode(&meta, json.as_bytes()))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        if !records.is_empty() {
            self.raw.append(records).await?;
        }
        Ok(())
    }

    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("wrong admin token")),
            None => Err(ApiError::unauthorized(
                "admin routes need `Authorization: Bearer <token>` (admin.token in weir.toml, or the token in <data_dir>/admin.token)",
            )),
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::too_large(format!(
                "the body could not be read (limit {MAX_ADMIN_BODY} bytes): {e}"
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid: {e}")))
}

/// Runs plugin work (compiling, `init`, fixtures) off the async workers.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(Into::into)
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        plugin_error(e)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
