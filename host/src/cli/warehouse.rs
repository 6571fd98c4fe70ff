//! `weir warehouse status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use crate::app::Layout;
use crate::config::Config;
use crate::ids::WriteKey;
use crate::log::Log;
use crate::log::storage::FsStorage;
use crate::timestamp;

#[derive(Subcommand)]
pub enum WarehouseCommand {
    /// Per table: rows and last load (and how long ago); per warehouse: how far behind the
    /// processed log it is.
    /// Reads the warehouse (DuckDB: between loads, while weir runs too).
    Status {
        /// The router's config (default: the embedded defaults' DuckDB warehouse).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (overrides the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub fn run(command: WarehouseCommand) -> anyhow::Result<ExitCode> {
    let WarehouseCommand::Status { config, data_dir } = command;
    let mut config = match &config {
        Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Config::embedded(
            data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./weir-data")),
            WriteKey::new("unused"),
            PathBuf::new(),
        ),
    };
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if config.warehouses.is_empty() {
        println!("no warehouse is configured");
        return Ok(ExitCode::SUCCESS);
    }
    let layout = Layout::new(&config.data_dir);
    let head = Log::open_read_only(&layout.processed_log, Arc::new(FsStorage))
        .map(|l| l.head().next.0)
        .ok();
    for spec in &config.warehouses {
        let mut loader = spec
            .loader(&config.data_dir)
            .with_context(|| format!("warehouse `{}`", spec.name))?;
        let schemas = spec.schemas();
        let (_, committed) = loader
            .open(&schemas)
            .with_context(|| format!("cannot open warehouse `{}`", spec.name))?;
        let engine = match &spec.engine {
            crate::warehouse::Engine::DuckDb { .. } => format!(
                "duckdb {}",
                spec.duckdb_path(&config.data_dir)
                    .unwrap_or_default()
                    .display()
            ),
            crate::warehouse::Engine::Postgres { .. } => "postgres".to_owned(),
        };
        let loaded = committed.map_or(0, |o| o.0);
        match head {
            Some(h) => println!(
                "warehouse `{}` ({engine}): loaded up to offset {loaded}; lag {} record(s) behind the processed log",
                spec.name,
                h.saturating_sub(loaded)
            ),
            None => println!(
                "warehouse `{}` ({engine}): loaded up to offset {loaded}",
                spec.name
            ),
        }
        let tables = loader.status(&schemas)?;
        if tables.is_empty() {
            println!("  (no tables yet)");
        }
        let now = time::OffsetDateTime::now_utc();
        for t in tables {
            // A table's lag: how long since a load last wrote to it.
            let last = t.last_load.map_or_else(
                || "-".into(),
                |at| {
                    let ago = (now - at).whole_seconds().max(0);
                    format!("{} ({ago} s ago)", timestamp::format(at))
                },
            );
            println!(
                "  {:<40} {:>10} rows   last load {last}",
                format!("{}.{}", t.schema, t.table),
                t.rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
