//! The `weir` command line.

mod admin_client;
mod dlq;
mod dump;
mod plan;
mod plugin;
mod serve;
mod warehouse;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "An event router for Segment/RudderStack SDKs with WebAssembly plugins",
    long_about = "weir accepts analytics events from Segment and RudderStack SDKs, makes them \
                  durable before acknowledging them, and routes them on."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router. Without --config it runs on embedded defaults: data in ./weir-data,
    /// ingest on 127.0.0.1:8080, admin on 127.0.0.1:8081, one source named `default`.
    Serve(ServeArgs),
    /// Inspect the durable log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Validate a config file and report every problem with its path.
    CheckConfig {
        /// The weir.toml to check.
        file: PathBuf,
    },
    /// Write, build, test and deploy plugins.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Check sample events against a tracking plan, without a running router.
    Plan {
        #[command(subcommand)]
        command: plan::PlanCommand,
    },
    /// List and replay dead-lettered events.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Inspect the warehouses weir loads.
    Warehouse {
        #[command(subcommand)]
        command: warehouse::WarehouseCommand,
    },
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Config file (weir.toml). Without it, embedded defaults are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Ingest listen address, e.g. 127.0.0.1:8080 (overrides the config's listen).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listen address for /metrics and the admin API (overrides admin.listen).
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print every record of a log as one JSON line: offset, kind, source, receive time and
    /// the stored event.
    Dump {
        /// Data directory of the router.
        #[arg(long, default_value = "./weir-data")]
        data_dir: PathBuf,
        /// Which log: the raw log the gateway writes, or the processed log the pipeline writes.
        #[arg(long, value_enum, default_value_t = Stage::Raw)]
        stage: Stage,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Stage {
    Raw,
    Processed,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Log {
            command: LogCommand::Dump { data_dir, stage },
        } => dump::run(&data_dir, stage),
        Command::CheckConfig { file } => check_config(&file),
        Command::Plugin { command } => plugin::run(command),
        Command::Plan { command } => plan::run(command),
        Command::Dlq { command } => dlq::run(command),
        Command::Warehouse { command } => warehouse::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} source{}, ingest on {}, data in {})",
                file.display(),
                c.sources.len(),
                if c.sources.len() == 1 { "" } else { "s" },
                c.listen,
                c.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprint!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}
