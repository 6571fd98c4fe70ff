//! A small client for the admin API of a running router (`weir plugin deploy`, `weir dlq replay`).

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// Admin address of the running router.
    #[arg(long, default_value = "http://127.0.0.1:8081", env = "WEIR_ADMIN_URL")]
    pub admin: String,
    /// Admin token (default: WEIR_ADMIN_TOKEN, else <data-dir>/admin.token).
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of the router, to find its generated admin token.
    #[arg(long, default_value = "./weir-data")]
    pub data_dir: std::path::PathBuf,
}

impl AdminArgs {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data_dir.join("admin.token");
        read_token(&path)
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no admin token: pass --token, set WEIR_ADMIN_TOKEN, or point --data-dir at the \
             router's data dir (cannot read {})",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

/// Sends `method path` with an optional JSON body; returns the JSON answer or the API's error.
pub fn call(
    args: &AdminArgs,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = args.token()?;
    let url = format!("{}{path}", args.admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .with_context(|| format!("invalid admin URL {url}"))?;
        let resp = client.request(req).await.with_context(|| {
            format!("cannot reach the router's admin API at {url} (is weir running? --admin)")
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            let message = value["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{status}: {message}");
        }
        Ok(value)
    })
}
