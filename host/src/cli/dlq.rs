//! `weir dlq list|replay`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;

use super::admin_client::{self, AdminArgs};
use crate::dlq;
use crate::log::storage::FsStorage;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Print the dead-lettered events not yet replayed, one JSON line each (reads the files;
    /// safe while weir runs).
    List {
        #[arg(long, default_value = "./weir-data")]
        data_dir: PathBuf,
        /// Queue: `pipeline` (transform and filter failures); every queue when omitted.
        #[arg(long)]
        queue: Option<String>,
        /// The queue of a destination (same as --queue destination:NAME).
        #[arg(long, conflicts_with = "queue")]
        destination: Option<String>,
    },
    /// Send a queue's events through their stage again, in order, on the running router.
    Replay {
        /// Queue to replay: `pipeline` (default) or `destination:NAME`.
        #[arg(long, default_value = "pipeline")]
        queue: String,
        /// The queue of a destination (same as --queue destination:NAME).
        #[arg(long)]
        destination: Option<String>,
        /// Only entries dead-lettered at or after this time (ISO-8601); older ones stay queued.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Entries per replay call.
const REPLAY_CHUNK: usize = 1000;

pub fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            data_dir,
            queue,
            destination,
        } => {
            let queue = destination.map(|d| format!("destination:{d}")).or(queue);
            let queues = match queue {
                Some(q) => vec![q],
                None => dlq::queues(&data_dir),
            };
            let mut total = 0;
            for q in queues {
                for e in dlq::list(&data_dir, &q, Arc::new(FsStorage))? {
                    println!("{}", json!({"queue": q, "entry": e}));
                    total += 1;
                }
            }
            eprintln!(
                "{total} dead-lettered event{}",
                if total == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            queue,
            destination,
            since,
            admin,
        } => {
            let queue = destination.map_or(queue, |d| format!("destination:{d}"));
            let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
            // In chunks, so a long replay shows progress and each chunk is durable on its own.
            let (mut replayed, mut seen, mut total) = (0u64, 0u64, None);
            loop {
                let answer = admin_client::call(
                    &admin,
                    http::Method::POST,
                    &format!("/admin/dlq/{queue}/replay?limit={REPLAY_CHUNK}{since}"),
                    None,
                )?;
                let n = answer["replayed"].as_u64().unwrap_or(0);
                let kept = answer["kept"].as_u64().unwrap_or(0);
                let remaining = answer["remaining"].as_u64().unwrap_or(0);
                let total = *total.get_or_insert(n + kept + remaining.saturating_sub(kept));
                replayed += n;
                seen += n + kept;
                if n + kept == 0 || seen >= total {
                    break;
                }
                eprintln!("  replayed {replayed} of up to {total}...");
            }
            println!("replayed {replayed} event(s) from `{queue}`");
            Ok(ExitCode::SUCCESS)
        }
    }
}
