//! A local HTTP server standing in for a SaaS destination: records what it receives and answers
//! as the test says (accept, fail, hang, be down).
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;

/// How the sink answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with `body`.
    Ok,
    /// This status, with this body.
    Status(u16, String),
    /// 429 (or another status) with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Never answers.
    Hang,
    /// Drops every connection at once: the destination is down.
    Down,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct State {
    mode: Mutex<Mode>,
    ok_body: Mutex<String>,
    received: Mutex<Vec<Received>>,
}

pub struct Sink {
    pub port: u16,
    state: Arc<State>,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Ok),
            ok_body: Mutex::new("{}".into()),
            received: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if matches!(*s.mode.lock(), Mode::Down) {
                    drop(stream);
                    continue;
                }
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let mode = s.mode.lock().clone();
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            if matches!(mode, Mode::Hang) {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            s.received.lock().push(Received {
                                at: Instant::now(),
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let (status, body, retry_after) = match mode {
                                Mode::Ok | Mode::Hang | Mode::Down => {
                                    (200, s.ok_body.lock().clone(), None)
                                }
                                Mode::Status(st, b) => (st, b, None),
                                Mode::RetryAfter(st, secs) => (st, "{}".to_owned(), Some(secs)),
                            };
                            let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            if let Some(secs) = retry_after {
                                resp.headers_mut().insert("retry-after", secs.into());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Sink { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    /// The body of 200 answers.
    pub fn set_ok_body(&self, body: &str) {
        *self.state.ok_body.lock() = body.to_owned();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().clone()
    }

    /// Waits until `n` requests arrived (or panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the sink got {} of {n} requests",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
