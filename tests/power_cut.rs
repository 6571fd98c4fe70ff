//! Power-cut tests: the router runs in-process on the fault-injecting storage, which forgets
//! every write not yet fsynced (and every directory change not yet synced) when the power is
//! cut. A SIGKILL cannot catch a missing fsync; this can.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use support::{client, track};
use weir::app::{App, Layout};
use weir::config::Config;
use weir::log::sim::SimStorage;
use weir::log::storage::Storage;
use weir::log::{Log, RecordKind};

fn test_config() -> Config {
    let text = r#"
        listen = "127.0.0.1:0"
        data_dir = "/data"
        [log]
        segment_bytes = 262144
        [admin]
        listen = "127.0.0.1:0"
        token = "test-admin-token-0123456789"
        [[sources]]
        name = "web"
        write_keys = ["test-key"]
    "#;
    Config::parse(text, Path::new("test.toml"), &|_| None).expect("valid config")
}

fn auth() -> String {
    support::basic("test-key")
}

fn batch(ids: &[String]) -> Value {
    json!({"batch": ids.iter().map(|id| track(id, "u")).collect::<Vec<_>>()})
}

/// Message ids of the events stored on `storage`, with their counts. An event is in the raw
/// log, or — once the pipeline processed it and retention deleted its raw segment — in the
/// processed log; in each log at most once.
fn stored_ids(storage: &SimStorage) -> HashMap<String, usize> {
    let layout = Layout::new(Path::new("/data"));
    let raw = ids_in(storage, &layout.raw_log);
    let mut all = ids_in(storage, &layout.processed_log);
    for (id, n) in &all {
        assert_eq!(*n, 1, "{id} is in the processed log {n} times");
    }
    for (id, n) in raw {
        assert_eq!(n, 1, "{id} is in the raw log {n} times");
        all.insert(id, 1);
    }
    all
}

fn ids_in(storage: &SimStorage, dir: &Path) -> HashMap<String, usize> {
    if storage.list(dir).map_or(true, |l| l.is_empty()) {
        return HashMap::new();
    }
    let log = Log::open_read_only(dir, Arc::new(storage.clone())).expect("open log");
    let mut reader = log.reader(log.oldest());
    let mut counts = HashMap::new();
    loop {
        let records = reader.read_batch(10_000).expect("read");
        if records.is_empty() {
            return counts;
        }
        for r in records {
            if r.meta.kind == RecordKind::Event {
                let v: Value = serde_json::from_slice(&r.payload).unwrap();
                *counts
                    .entry(v["messageId"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
}

async fn load(addr: SocketAddr, acked: Arc<Mutex<Vec<String>>>, sender: usize, round: usize) {
    let c = client();
    let url = format!("http://{addr}/v1/batch");
    for n in 0.. {
        let ids: Vec<String> = (0..25)
            .map(|k| format!("r{round}-s{sender}-b{n}-e{k}"))
            .collect();
        match c
            .post(&url)
            .header("authorization", auth())
            .json(&batch(&ids))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => acked.lock().extend(ids),
            // After the cut the dead machine answers 503 (or not at all): stop.
            _ => return,
        }
    }
}

/// Concurrent load, power cut at a random moment, recovery: every acknowledged event is in the
/// recovered log, none twice, and the recovered router serves again (with its dedupe state).
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_a_power_cut() {
    let mut storage = SimStorage::new();
    let mut all_acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let app = App::start(test_config(), Arc::new(storage.clone()))
            .await
            .expect("start");
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let senders: Vec<_> = (0..12)
            .map(|s| tokio::spawn(load(app.ingest_addr, acked.clone(), s, round)))
            .collect();
        let cut_after = Duration::from_millis(rand::rng().random_range(200..900));
        tokio::time::sleep(cut_after).await;
        let survivor = storage.power_cut();
        for s in senders {
            s.await.unwrap();
        }
        app.shutdown().await;
        let acked = acked.lock().clone();
        assert!(!acked.is_empty(), "round {round}: load ran before the cut");

        let counts = stored_ids(&survivor);
        for id in acked.iter().chain(&all_acked) {
            assert_eq!(
                counts.get(id),
                Some(&1),
                "round {round}: acknowledged {id} must survive the power cut exactly once"
            );
        }
        assert!(counts.values().all(|&n| n == 1));
        all_acked.extend(acked);
        storage = survivor;
    }

    // The recovered router accepts new events and still knows the old ids.
    let app = App::start(test_config(), Arc::new(storage.clone()))
        .await
        .expect("start after the last cut");
    let c = client();
    let ids: Vec<String> = vec![all_acked[0].clone(), "after-recovery".into()];
    let r = c
        .post(format!("http://{}/v1/batch", app.ingest_addr))
        .header("authorization", auth())
        .json(&batch(&ids))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.shutdown().await;
    let counts = stored_ids(&storage);
    assert_eq!(
        counts.get(&all_acked[0]),
        Some(&1),
        "a resent old id is deduplicated"
    );
    assert_eq!(counts.get("after-recovery"), Some(&1));
    let distinct: HashSet<&String> = all_acked.iter().collect();
    assert_eq!(distinct.len(), all_acked.len());
}

/// No ack before the fsync that covers it: with every fsync held, a request is written but
/// not answered; released, it is answered 200.
#[tokio::test(flavor = "multi_thread")]
async fn no_ack_leaves_before_its_fsync() {
    let storage = SimStorage::new();
    let app = App::start(test_config(), Arc::new(storage.clone()))
        .await
        .expect("start");
    storage.hold_syncs();
    let url = format!("http://{}/v1/track", app.ingest_addr);
    let request = tokio::spawn(async move {
        client()
            .post(url)
            .header("authorization", auth())
            .json(&json!({"event": "E", "userId": "u", "messageId": "held"}))
            .send()
            .await
            .map(|r| r.status())
    });
    while storage.syncs_waiting() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "answered before its fsync returned");
    // Cut the power while the fsync is held: the event was never acknowledged, and is gone.
    let survivor = storage.power_cut();
    let status = request.await.unwrap().unwrap();
    assert_ne!(status, 200, "a request whose fsync failed must not get 200");
    app.shutdown().await;
    assert!(stored_ids(&survivor).is_empty());

    // Same again, released this time: answered 200 and durable.
    let app = App::start(test_config(), Arc::new(survivor.clone()))
        .await
        .expect("start");
    survivor.hold_syncs();
    let url = format!("http://{}/v1/track", app.ingest_addr);
    let request = tokio::spawn(async move {
        client()
            .post(url)
            .header("authorization", auth())
            .json(&json!({"event": "E", "userId": "u", "messageId": "released"}))
            .send()
            .await
            .map(|r| r.status())
    });
    while survivor.syncs_waiting() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!request.is_finished());
    survivor.release_syncs();
    assert_eq!(request.await.unwrap().unwrap(), 200);
    let after = survivor.power_cut();
    app.shutdown().await;
    assert_eq!(stored_ids(&after).get("released"), Some(&1));
}

/// A full disk answers 503 with Retry-After, keeps what was stored, and recovers once space
/// is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_recovers() {
    let storage = SimStorage::new();
    let app = App::start(test_config(), Arc::new(storage.clone()))
        .await
        .expect("start");
    let c = client();
    let url = format!("http://{}/v1/batch", app.ingest_addr);
    let send = |ids: Vec<String>| {
        c.post(&url)
            .header("authorization", auth())
            .json(&batch(&ids))
            .send()
    };
    assert_eq!(send(vec!["before".into()]).await.unwrap().status(), 200);
    storage.set_capacity(Some(1));
    let r = send(vec!["during".into()]).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "disk_full");
    storage.set_capacity(None);
    assert_eq!(send(vec!["during".into()]).await.unwrap().status(), 200);
    app.shutdown().await;
    let counts = stored_ids(&storage);
    assert_eq!(counts.len(), 2);
}
