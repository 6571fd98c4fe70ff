//! Crash tests against the real binary: SIGKILL under load, and a torn segment tail.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Weir, client, config, track};

fn auth() -> String {
    support::basic("test-key")
}

fn batch_ids(sender: usize, n: usize) -> Vec<String> {
    (0..20).map(|k| format!("s{sender}-b{n}-e{k}")).collect()
}

fn batch_body(ids: &[String]) -> Value {
    json!({"batch": ids.iter().map(|id| track(id, &format!("user-{}", &id[..3]))).collect::<Vec<_>>()})
}

/// Many concurrent senders, SIGKILL mid-load, restart: every event that got 200 is in the log
/// exactly once; an SDK that resends what it never got an answer for (and some of what it did)
/// still ends with each event once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let mut weir = Weir::start(&config(""));
    let url = weir.url("/v1/batch");
    let acked: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let unanswered: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..16 {
        let (url, acked, unanswered) = (url.clone(), acked.clone(), unanswered.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            for n in 0.. {
                let ids = batch_ids(s, n);
                let r = c
                    .post(&url)
                    .header("authorization", auth())
                    .json(&batch_body(&ids))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().push(ids),
                    _ => {
                        unanswered.lock().push(ids);
                        return;
                    }
                }
            }
        }));
    }
    // Let load build up, then kill in the middle of it.
    while acked.lock().len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    weir.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().iter().flatten().cloned().collect();
    assert!(acked.len() >= 4000);

    weir.respawn();
    let count_ids = |w: &Weir| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for e in w.events() {
            *counts
                .entry(e["messageId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    };
    let counts = count_ids(&weir);
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged event {id} must be stored exactly once"
        );
    }
    assert!(counts.values().all(|&n| n == 1), "no event stored twice");

    // The SDKs retry what got no answer, and some resend answered batches (a lost 200).
    let c = client();
    let resend: Vec<Vec<String>> = unanswered
        .lock()
        .iter()
        .cloned()
        .chain(acked.chunks(20).take(10).map(<[String]>::to_vec))
        .collect();
    for ids in &resend {
        let r = c
            .post(weir.url("/v1/batch"))
            .header("authorization", auth())
            .json(&batch_body(ids))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let counts = count_ids(&weir);
    let everything: HashSet<&String> = acked.iter().chain(resend.iter().flatten()).collect();
    for id in everything {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} must be stored exactly once after retries"
        );
    }
}

/// A segment that ends inside a record (a crash inside a write) is recovered: the records
/// before it are kept, the torn one is cut, and new appends follow.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_segment_tail_is_recovered() {
    let mut weir = Weir::start(&config(""));
    let c = client();
    let send = |id: String, url: String| {
        let c = c.clone();
        async move {
            c.post(url)
                .header("authorization", auth())
                .json(&json!({"event": "E", "userId": "u", "messageId": id}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..10 {
        assert_eq!(send(format!("t{i}"), weir.url("/v1/track")).await, 200);
    }
    assert!(weir.terminate().success());
    let seg = weir.data_dir().join("log/raw/00000000000000000000.seg");
    let bytes = std::fs::read(&seg).unwrap();

    // A crash inside the write of an 11th record leaves half a frame at the end.
    let mut torn = bytes.clone();
    torn.extend_from_slice(&bytes[..bytes.len() / 20]);
    std::fs::write(&seg, &torn).unwrap();
    weir.respawn();
    assert!(
        weir.log_text().contains("cut a torn tail"),
        "recovery is logged:\n{}",
        weir.log_text()
    );
    let ids = |w: &Weir| -> Vec<String> {
        w.events()
            .iter()
            .map(|e| e["messageId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&weir),
        (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>()
    );
    assert_eq!(send("t10".into(), weir.url("/v1/track")).await, 200);
    let raw = weir.dump("raw");
    assert_eq!(raw.len(), 11);
    assert_eq!(raw[10]["offset"], 10);
    assert_eq!(raw[10]["event"]["messageId"], "t10");
    assert!(weir.terminate().success());

    // A segment cut in the middle of its last record keeps every record before it.
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 40).unwrap();
    drop(f);
    weir.respawn();
    assert_eq!(
        ids(&weir),
        (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>()
    );
    assert_eq!(send("t11".into(), weir.url("/v1/track")).await, 200);
    let raw = weir.dump("raw");
    assert_eq!(raw[10]["offset"], 10);
    assert_eq!(raw[10]["event"]["messageId"], "t11");
}

/// SIGTERM drains: requests in flight when the signal arrives are answered, and what was
/// answered 200 is in the log.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests() {
    let mut weir = Weir::start(&config(""));
    let url = weir.url("/v1/batch");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..8 {
        let (url, acked) = (url.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let c = client();
            for n in 0.. {
                let ids = batch_ids(s, n);
                match c
                    .post(&url)
                    .header("authorization", auth())
                    .json(&batch_body(&ids))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => acked.lock().extend(ids),
                    Ok(r) => {
                        // Refused while draining: must be a proper 503.
                        assert_eq!(r.status(), 503);
                        return;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    while acked.lock().len() < 2000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = weir.terminate();
        (s, weir)
    })
    .await
    .unwrap();
    let (status, weir) = status;
    assert!(status.success(), "clean exit after SIGTERM");
    for s in senders {
        s.await.unwrap();
    }
    let stored: HashSet<String> = weir
        .events()
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_owned())
        .collect();
    for id in acked.lock().iter() {
        assert!(stored.contains(id), "{id} was acknowledged before shutdown");
    }
    assert!(weir.log_text().contains("weir stopped"));
}
