//! `weir serve` as a child process of a bench: the config written into a temp dir, stderr to
//! `weir.log` there, its addresses read from the banner it prints. Shared by the benches that
//! drive the router over HTTP (`#[path]`-included, as benches are separate crates).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A started `weir serve` and the addresses it listens on.
pub struct Started {
    pub child: Child,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `weir serve` on `config` (TOML), written to `dir/weir.toml`.
pub fn start(dir: &Path, config: &str) -> anyhow::Result<Started> {
    let config_path = dir.join("weir.toml");
    std::fs::write(&config_path, config)?;
    let stderr = std::fs::File::create(dir.join("weir.log"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .context("cannot start weir")?;
    let banner = read_banner(&mut child, |l| l.trim_start().starts_with("data"));
    let url = |name: &str| -> Option<SocketAddr> {
        banner
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))?
            .parse()
            .ok()
    };
    let (Some(ingest), Some(admin)) = (url("ingest"), url("admin")) else {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default();
        bail!("weir did not print its addresses; stdout: {banner:?}; stderr:\n{log}");
    };
    Ok(Started {
        child,
        ingest,
        admin,
    })
}

/// The lines `child` prints up to the one `last` accepts; the rest of its stdout is drained on
/// a thread, so the child never blocks on a full pipe.
pub fn read_banner(child: &mut Child, last: impl Fn(&str) -> bool) -> Vec<String> {
    let Some(stdout) = child.stdout.take() else {
        return Vec::new();
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let done = last(&line);
        seen.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    seen
}
