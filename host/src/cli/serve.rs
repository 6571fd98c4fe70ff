//! `weir serve`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::ServeArgs;
use crate::app::{App, load_or_create_secret};
use crate::config::{Config, DEFAULT_SOURCE};
use crate::ids::WriteKey;
use crate::log::storage::{FsStorage, Storage};

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let embedded = args.config.is_none();
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => {
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./weir-data"));
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
            let key = load_or_create_secret(storage.as_ref(), &data_dir.join("default.writekey"))?;
            let demo = data_dir.join("demo").join("normalize.wasm");
            write_if_changed(&demo, crate::plugin::bundled::NORMALIZE)?;
            Config::embedded(data_dir, WriteKey::new(&key), demo)
        }
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(l) = args.admin_listen {
        config.admin.listen = l;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let app = App::start(config.clone(), storage).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "weir {} serving", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "  ingest   http://{}", app.ingest_addr)?;
        writeln!(
            out,
            "  admin    http://{}  (metrics at /metrics)",
            app.admin_addr
        )?;
        writeln!(out, "  data     {}", config.data_dir.display())?;
        for s in &config.sources {
            if embedded && s.id.as_str() == DEFAULT_SOURCE {
                for k in &s.write_keys {
                    writeln!(out, "  source   {}  write key: {}", s.id, k.as_str())?;
                }
            } else {
                writeln!(out, "  source   {}", s.id)?;
            }
        }
        if config.admin.token.is_none() {
            writeln!(
                out,
                "  admin token in {}",
                config.data_dir.join("admin.token").display()
            )?;
        }
        out.flush()?;
        drop(out);
        wait_for_signal().await?;
        tracing::info!("shutting down: finishing in-flight requests");
        app.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the embedded demo component where the plugin watcher expects it.
fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// One router per data directory: a second one would interleave writes into the same log.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another weir process is using the data dir {} (stop it, or give this one --data-dir)",
            dir.display()
        );
    }
    Ok(file)
}
