//! Sending a destination plugin's requests: the host, not the plugin, talks to the network.
//!
//! A request goes out only to a host on the destination's allow-list (`allow_hosts`, entries
//! `host` or `host:port`); anything else — including private and loopback addresses that are not
//! listed — is refused before a connection is made. HTTPS uses rustls with the webpki roots.
//! Every request has a timeout covering connect, send and reading the answer, and the answer's
//! body is read up to a cap (plugins classify on status, headers and the start of the body).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::plugin::bindings::types::{Header, Request, Response};

/// Bytes of an answer's body kept for `classify`.
const MAX_RESPONSE_BODY: usize = 256 * 1024;

/// Why a request was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused by the host before sending: never retried.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer (connection refused, reset, timeout): retried.
    #[error("no answer: {0}")]
    Failed(String),
}

/// The hosts a destination may send to.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    pub fn new(entries: &[String]) -> AllowList {
        AllowList {
            entries: entries
                .iter()
                .map(|e| {
                    let e = e.trim().to_ascii_lowercase();
                    match e.rsplit_once(':') {
                        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                            (h.trim_matches(['[', ']']).to_owned(), p.parse().ok())
                        }
                        _ => (e.trim_matches(['[', ']']).to_owned(), None),
                    }
                })
                .collect(),
        }
    }

    /// Checks `uri` (absolute, http or https) against the list.
    pub fn check(&self, uri: &Uri) -> Result<(), SendError> {
        let scheme = uri.scheme_str().unwrap_or_default();
        if scheme != "http" && scheme != "https" {
            return Err(SendError::Refused(format!(
                "`{uri}` is not an absolute http(s) URL"
            )));
        }
        let host = uri
            .host()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
            .ok_or_else(|| SendError::Refused(format!("`{uri}` has no host")))?;
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let listed = self
            .entries
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| p == port));
        if listed {
            Ok(())
        } else {
            let private = host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| is_private(&ip))
                || host == "localhost";
            Err(SendError::Refused(format!(
                "host `{host}:{port}` is not on the destination's allow_hosts{}",
                if private {
                    " (private and loopback addresses must be listed explicitly)"
                } else {
                    ""
                }
            )))
        }
    }
}

fn is_private(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The HTTP client of one destination.
#[derive(Clone)]
pub struct Sender {
    client: Client<Https, Full<Bytes>>,
    allow: AllowList,
    timeout: Duration,
}

impl Sender {
    pub fn new(allow: AllowList, timeout: Duration) -> Sender {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Sender {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            allow,
            timeout,
        }
    }

    /// Sends `req` and returns the destination's answer.
    pub async fn send(&self, req: &Request) -> Result<Response, SendError> {
        let uri: Uri = req
            .url
            .parse()
            .map_err(|e| SendError::Refused(format!("`{}` is not a valid URL: {e}", req.url)))?;
        self.allow.check(&uri)?;
        let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|m| {
                [
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ]
                .contains(m)
            })
            .ok_or_else(|| SendError::Refused(format!("method `{}` is not allowed", req.method)))?;
        let mut builder = http::Request::builder().method(method).uri(uri);
        for h in &req.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| SendError::Refused(format!("invalid header name `{}`", h.name)))?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| {
                SendError::Refused(format!("invalid value for header `{}`", h.name))
            })?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.clone())))
            .map_err(|e| SendError::Refused(format!("cannot build the request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| SendError::Failed(format!("{e:#}")))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| Header {
                    name: n.as_str().to_owned(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect();
            let body = match Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes().to_vec(),
                // An answer bigger than the cap is still an answer: classify sees its status.
                Err(_) => Vec::new(),
            };
            Ok(Response {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(SendError::Failed(format!(
                    "no answer within {:?}",
                    self.timeout
                )))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_refuses_unlisted_and_private_hosts() {
        let allow = AllowList::new(&["api2.amplitude.com".into(), "127.0.0.1:9000".into()]);
        let ok = |u: &str| allow.check(&u.parse().unwrap());
        assert!(ok("https://api2.amplitude.com/2/httpapi").is_ok());
        assert!(ok("http://127.0.0.1:9000/hook").is_ok());
        let e = ok("http://127.0.0.1:9001/hook").unwrap_err();
        assert!(e.to_string().contains("must be listed explicitly"), "{e}");
        assert!(ok("http://10.0.0.5/x").is_err());
        assert!(ok("https://evil.example/x").is_err());
        assert!(ok("ftp://api2.amplitude.com/").is_err());
    }
}
