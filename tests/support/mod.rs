//! Test harness: the real `weir` binary on `127.0.0.1:0`, in its own temp dir.
#![allow(dead_code)]

pub mod sink;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the `weir` binary cargo built for these tests.
pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A minimal config for one source `web` with write key `test-key`; `extra` is appended (more
/// sections, or keys for the `[[sources]]` table when it starts with a key).
pub fn config(extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "test-admin-token-0123456789"

[[sources]]
name = "web"
write_keys = ["test-key"]
{extra}
"#
    )
}

/// A running `weir serve`.
pub struct Weir {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub ingest: String,
    pub admin: String,
    pub stdout_lines: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Weir {
    /// Starts weir with `config` (TOML) in a fresh temp dir; its data dir is `<dir>/data`.
    pub fn start(config: &str) -> Weir {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut w = Weir::start_in(temp.path(), config);
        w._temp = Some(temp);
        w
    }

    /// Starts weir in `dir`, writing `config` to `dir/weir.toml`.
    pub fn start_in(dir: &Path, config: &str) -> Weir {
        let config_path = dir.join("weir.toml");
        let data = dir.join("data");
        let text = format!("data_dir = {:?}\n{config}", data.display().to_string());
        std::fs::write(&config_path, text).expect("write config");
        let mut w = Weir {
            child: None,
            dir: dir.to_owned(),
            config_path,
            ingest: String::new(),
            admin: String::new(),
            stdout_lines: Vec::new(),
            _temp: None,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weir.log"))
            .expect("log file");
        let mut child = Command::new(weir_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("WEIR_LOG", "info,weir=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn weir");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        self.stdout_lines.clear();
        while let Some(Ok(line)) = lines.next() {
            self.stdout_lines.push(line.clone());
            let url = |l: &str| {
                l.split_whitespace()
                    .find(|w| w.starts_with("http://"))
                    .map(str::to_owned)
            };
            if line.trim_start().starts_with("ingest") {
                self.ingest = url(&line).expect("ingest url");
            }
            if line.trim_start().starts_with("admin ") {
                self.admin = url(&line).expect("admin url");
            }
            if line.trim_start().starts_with("data") {
                break;
            }
            assert!(Instant::now() < deadline, "weir did not start in time");
        }
        assert!(
            !self.ingest.is_empty(),
            "weir did not print its address; stdout: {:?}; log:\n{}",
            self.stdout_lines,
            self.log_text()
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ingest)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("weir.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "weir did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same config and data.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        self.spawn();
    }

    /// Starts again after a kill (the process is already gone).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// `weir log dump` of this instance's data dir.
    pub fn dump(&self, stage: &str) -> Vec<Value> {
        dump(&self.data_dir(), stage)
    }

    /// The events (kind `event`) in the raw log.
    pub fn events(&self) -> Vec<Value> {
        self.dump("raw")
            .into_iter()
            .filter(|r| r["kind"] == "event")
            .map(|r| r["event"].clone())
            .collect()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill9();
        // WEIR_TEST_KEEP=1 keeps the temp dir (config, data, weir.log) for a post-mortem.
        if std::env::var_os("WEIR_TEST_KEEP").is_some()
            && let Some(t) = self._temp.take()
        {
            eprintln!("kept {}", t.keep().display());
        }
    }
}

/// Runs `weir log dump --data-dir DIR --stage STAGE` and parses its lines.
pub fn dump(data_dir: &Path, stage: &str) -> Vec<Value> {
    json_lines(&["log", "dump", "--stage", stage], data_dir)
}

/// Runs `weir ARGS --data-dir DIR`, which must succeed, and parses each line of its output as
/// JSON.
fn json_lines(args: &[&str], data_dir: &Path) -> Vec<Value> {
    let out = Command::new(weir_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap_or_else(|e| panic!("run weir {args:?}: {e}"));
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("weir {args:?}: {l}: not JSON: {e}"))
        })
        .collect()
}

/// `Authorization` header value for Basic auth with `key` as user and an empty password, as
/// the SDKs send it.
pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// The admin listener's `/metrics` text.
pub async fn metrics(weir: &Weir) -> String {
    client()
        .get(weir.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The `/metrics` text once it contains `wanted`, or the last text read after `timeout`:
/// counters move a moment after the effect a test waits for (a destination counts a delivery
/// when the response is back, after the sink has recorded the request).
pub async fn metrics_containing(weir: &Weir, wanted: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = metrics(weir).await;
        if text.contains(wanted) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `weir dlq list` on the router's data dir: one JSON entry per dead letter.
pub fn dlq_list(weir: &Weir) -> Vec<Value> {
    json_lines(&["dlq", "list"], &weir.data_dir())
}

/// POSTs `events` as one `/v1/batch` to `weir` with the tests' write key; it must answer 200.
pub async fn send(weir: &Weir, events: Vec<Value>) {
    send_to(&weir.url("/v1/batch"), events).await;
}

/// [`send`] to a batch endpoint's `url`, for a task that does not hold the [`Weir`].
pub async fn send_to(url: &str, events: Vec<Value>) {
    let r = client()
        .post(url)
        .header("authorization", basic("test-key"))
        .json(&serde_json::json!({ "batch": events }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
}

/// An HTTP client with no connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A Segment-spec track event with a unique messageId.
pub fn track(message_id: &str, user: &str) -> Value {
    serde_json::json!({
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "messageId": message_id,
        "properties": {"revenue": 12.5, "currency": "EUR"},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        "timestamp": "2024-05-01T12:00:00.000Z"
    })
}

/// Four `Ad Clicked` tracks, each with its messageId as user: `segment-denied` (Segment's
/// `categoryPreferences` denies Advertising, allows Analytics), `rudder-denied` (RudderStack's
/// `deniedConsentIds`), `granted`, and `no-consent-info`.
pub fn advertising_consent_events() -> Vec<Value> {
    let with = |id: &str, context: Value| {
        serde_json::json!({"type": "track", "event": "Ad Clicked", "userId": id,
            "messageId": id, "context": context})
    };
    vec![
        with(
            "segment-denied",
            serde_json::json!({"consent": {"categoryPreferences":
                {"Advertising": false, "Analytics": true}}}),
        ),
        with(
            "rudder-denied",
            serde_json::json!({"consentManagement": {"deniedConsentIds": ["Advertising"]}}),
        ),
        with(
            "granted",
            serde_json::json!({"consent": {"categoryPreferences": {"Advertising": true}}}),
        ),
        with("no-consent-info", serde_json::json!({})),
    ]
}

/// The cargo target directory these tests were built in (`$OUT_DIR` is
/// `<target>/<profile>/build/<pkg>/out`).
pub fn target_dir() -> PathBuf {
    let out = Path::new(env!("OUT_DIR"));
    out.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|b| b.parent())
        .and_then(|p| p.parent())
        .unwrap_or(out)
        .to_owned()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
