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
        /// Queue to replay (default `pipeline`).
        #[arg(long, default_value = "pipeline")]
        queue: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

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
        DlqCommand::Replay { queue, admin } => {
            let answer = admin_client::call(
                &admin,
                http::Method::POST,
                &format!("/admin/dlq/{queue}/replay"),
                None,
            )?;
            println!(
                "replayed {} event(s) from `{queue}`",
                answer["replayed"].as_u64().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
