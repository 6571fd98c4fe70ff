//! Warehouse batch mode against real PostgreSQL (127.0.0.1:5432, each test its own database) and
//! real DuckDB files: the Segment/RudderStack layout, types and evolution, discards, dedupe,
//! crash and outage, and a dbt-style query on data sent through the HTTP API.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Weir, eventually, send};
use tokio_postgres::{Client, NoTls};

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A fresh database for one test; dropped by nothing (names are unique per run).
async fn fresh_database(tag: &str) -> (String, Client) {
    let (admin, conn) = match tokio_postgres::connect(PG, NoTls).await {
        Ok(c) => c,
        Err(e) if std::env::var("CI").is_err() => {
            panic!("PostgreSQL is required at 127.0.0.1:5432 (user postgres, trust): {e}")
        }
        Err(e) => panic!("PostgreSQL at 127.0.0.1:5432 is required under CI: {e}"),
    };
    tokio::spawn(conn);
    let name = format!("weir_{tag}_{}", weir::ids::random_token(8).to_lowercase());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    (url, client)
}

fn config(warehouse: &str, extra_source: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "test-admin-token-0123456789"

[[sources]]
name = "web"
write_keys = ["test-key"]
{extra_source}

{warehouse}
"#
    )
}

/// A PostgreSQL warehouse `pg` at `url` taking source `web`, with `settings` (TOML lines).
fn postgres_warehouse(url: &str, settings: &str) -> String {
    format!(
        "[[warehouses]]\nname = \"pg\"\nengine = \"postgres\"\nurl = \"{url}\"\nsources = [\"web\"]\n{settings}\n"
    )
}

/// weir with the PostgreSQL warehouse `pg` (`settings`) over a fresh database (`tag`), its
/// source `web` with `source` (TOML lines), and a client of that database.
async fn start_with_postgres(tag: &str, settings: &str, source: &str) -> (Weir, Client) {
    let (url, pg) = fresh_database(tag).await;
    let weir = Weir::start(&config(&postgres_warehouse(&url, settings), source));
    (weir, pg)
}

/// A DuckDB warehouse `wh` (the file `wh.duckdb` in the data dir) taking source `web`, with
/// `settings` (TOML lines).
fn duckdb_warehouse(settings: &str) -> String {
    format!("[[warehouses]]\nname = \"wh\"\nengine = \"duckdb\"\nsources = [\"web\"]\n{settings}\n")
}

/// Events of every type, with a sentAt so timestamps are corrected.
fn every_type() -> Vec<Value> {
    vec![
        json!({"type": "identify", "messageId": "i1", "userId": "u1", "anonymousId": "a1",
            "traits": {"email": "ann@example.com", "plan": "free", "age": 30},
            "timestamp": "2024-05-01T10:00:00.000Z"}),
        json!({"type": "track", "messageId": "t1", "userId": "u1", "event": "Order Completed",
            "properties": {"revenue": 19.5, "items": 2, "gift": false, "coupon": "SPRING"},
            "context": {"page": {"path": "/checkout"}}, "timestamp": "2024-05-01T10:05:00.000Z"}),
        json!({"type": "page", "messageId": "p1", "anonymousId": "a1", "name": "Home",
            "properties": {"path": "/", "title": "Shop"}, "timestamp": "2024-05-01T09:59:00.000Z"}),
        json!({"type": "screen", "messageId": "s1", "userId": "u2", "name": "Settings",
            "timestamp": "2024-05-02T08:00:00.000Z"}),
        json!({"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme",
            "traits": {"employees": 40}, "timestamp": "2024-05-01T10:01:00.000Z"}),
        json!({"type": "alias", "messageId": "al1", "userId": "u1", "previousId": "a1",
            "timestamp": "2024-05-01T10:02:00.000Z"}),
        json!({"type": "identify", "messageId": "i2", "userId": "u1",
            "traits": {"plan": "pro"}, "timestamp": "2024-05-03T10:00:00.000Z"}),
        json!({"type": "identify", "messageId": "i0", "userId": "u1",
            "traits": {"plan": "trial", "email": "old@example.com"}, "timestamp": "2024-04-01T10:00:00.000Z"}),
        json!({"type": "track", "messageId": "t2", "userId": "u2", "event": "Order Completed",
            "properties": {"revenue": 5, "items": 1}, "timestamp": "2024-05-02T08:01:00.000Z"}),
    ]
}

/// The text column `sql` selects from the DuckDB `file`, once it has `n` rows (the loader
/// holds the file only while it loads; up to 30 s).
fn duckdb_texts(weir: &Weir, file: &std::path::Path, sql: &str, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(30), || {
        let conn = duckdb::Connection::open(file).ok()?;
        let texts: Vec<String> = conn
            .prepare(sql)
            .ok()?
            .query_map([], |r| r.get(0))
            .ok()?
            .filter_map(Result::ok)
            .collect();
        (texts.len() == n).then_some(texts)
    })
    .unwrap_or_else(|| panic!("{sql}: not {n} rows in time\n{}", weir.log_text()))
}

async fn pg_rows(c: &Client, sql: &str) -> Vec<tokio_postgres::Row> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn wait_pg(c: &Client, sql: &str, want: i64) {
    let mut last = -1;
    for _ in 0..300 {
        if let Ok(r) = c.query_one(sql, &[]).await {
            last = r.get::<_, i64>(0);
            if last == want {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql}: got {last}, want {want}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_gets_the_segment_layout() {
    let (weir, pg) = start_with_postgres("layout", "flush_interval_ms = 200", "").await;
    send(&weir, every_type()).await;
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 2).await;

    // Tables and row counts.
    for (table, n) in [
        ("tracks", 2i64),
        ("order_completed", 2),
        ("identifies", 3),
        ("users", 1),
        ("pages", 1),
        ("screens", 1),
        ("groups", 1),
        ("aliases", 1),
    ] {
        let r = pg_rows(&pg, &format!("SELECT count(*) FROM web.{table}")).await;
        assert_eq!(r[0].get::<_, i64>(0), n, "{table}");
    }
    // Real types: timestamps, numbers, booleans.
    let types: Vec<(String, String)> = pg_rows(
        &pg,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_schema = 'web' AND table_name = 'order_completed'",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let ty = |c: &str| {
        types
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, t)| t.as_str())
            .unwrap_or("missing")
    };
    assert_eq!(ty("timestamp"), "timestamp with time zone");
    assert_eq!(ty("received_at"), "timestamp with time zone");
    assert_eq!(ty("original_timestamp"), "timestamp with time zone");
    assert_eq!(ty("uuid_ts"), "timestamp with time zone");
    assert_eq!(ty("revenue"), "double precision");
    assert_eq!(ty("items"), "bigint");
    assert_eq!(ty("gift"), "boolean");
    assert_eq!(ty("coupon"), "text");
    assert_eq!(ty("context_page_path"), "text");
    assert_eq!(ty("event_text"), "text");
    let t = pg_rows(
        &pg,
        "SELECT event, event_text, context_page_path, user_id FROM web.tracks WHERE id = 't1'",
    )
    .await;
    assert_eq!(t[0].get::<_, String>(0), "order_completed");
    assert_eq!(t[0].get::<_, String>(1), "Order Completed");
    assert_eq!(t[0].get::<_, String>(2), "/checkout");
    assert_eq!(t[0].get::<_, String>(3), "u1");
    // users: per trait, the latest non-null value by timestamp.
    let u = pg_rows(
        &pg,
        "SELECT plan, email, age FROM web.users WHERE id = 'u1'",
    )
    .await;
    assert_eq!(u[0].get::<_, String>(0), "pro");
    assert_eq!(u[0].get::<_, String>(1), "ann@example.com");
    assert_eq!(u[0].get::<_, i64>(2), 30);
    let g = pg_rows(&pg, "SELECT group_id, employees FROM web.groups").await;
    assert_eq!(
        (g[0].get::<_, String>(0), g[0].get::<_, i64>(1)),
        ("acme".into(), 40)
    );
    let a = pg_rows(&pg, "SELECT previous_id FROM web.aliases").await;
    assert_eq!(a[0].get::<_, String>(0), "a1");

    // A new property adds a column; a value of the wrong type goes to discards with its row
    // landing, that column NULL.
    send(
        &weir,
        vec![
            json!({"type": "track", "messageId": "t3", "userId": "u3", "event": "Order Completed",
                "properties": {"revenue": "lots", "items": 3, "channel": "email"}}),
        ],
    )
    .await;
    wait_pg(&pg, "SELECT count(*) FROM web.order_completed", 3).await;
    let r = pg_rows(
        &pg,
        "SELECT revenue, items, channel FROM web.order_completed WHERE id = 't3'",
    )
    .await;
    assert_eq!(r[0].get::<_, Option<f64>>(0), None);
    assert_eq!(r[0].get::<_, i64>(1), 3);
    assert_eq!(r[0].get::<_, String>(2), "email");
    let d = pg_rows(
        &pg,
        "SELECT table_name, column_name, column_value, reason, row_id FROM web.discards",
    )
    .await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].get::<_, String>(0), "order_completed");
    assert_eq!(d[0].get::<_, String>(1), "revenue");
    assert_eq!(d[0].get::<_, String>(2), "lots");
    assert!(d[0].get::<_, String>(3).contains("double"));
    assert_eq!(d[0].get::<_, String>(4), "t3");

    // `weir warehouse status` reports tables and lag.
    let out = std::process::Command::new(support::weir_bin())
        .args(["warehouse", "status", "--config"])
        .arg(&weir.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("lag 0 record"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("web.order_completed"))
        .unwrap_or_else(|| panic!("no order_completed line: {text}"));
    assert!(line.contains(" 3 rows"), "{text}");
    assert!(line.contains("s ago)"), "the table's lag: {text}");
}

/// A dbt-style model on data sent through the HTTP API: daily active users from tracks and
/// identifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_dbt_style_query_returns_the_expected_numbers() {
    let (weir, pg) = start_with_postgres("dbt", "flush_interval_ms = 200", "").await;
    send(&weir, every_type()).await;
    wait_pg(&pg, "SELECT count(*) FROM web.identifies", 3).await;
    let rows = pg_rows(
        &pg,
        "WITH activity AS ( \
           SELECT user_id, \"timestamp\" FROM web.tracks \
           UNION ALL SELECT user_id, \"timestamp\" FROM web.identifies) \
         SELECT date_trunc('day', \"timestamp\" AT TIME ZONE 'UTC')::date AS day, \
                count(DISTINCT user_id) AS dau \
         FROM activity WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .await;
    let got: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, time::Date>(0).to_string(), r.get::<_, i64>(1)))
        .collect();
    assert_eq!(
        got,
        [
            ("2024-04-01".to_owned(), 1),
            ("2024-05-01".to_owned(), 1),
            ("2024-05-02".to_owned(), 1),
            ("2024-05-03".to_owned(), 1),
        ]
    );
}

/// SIGKILL while loading, restart: every event is in its table exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_load_neither_loses_nor_duplicates() {
    let (mut weir, pg) =
        start_with_postgres("crash", "flush_interval_ms = 50\nflush_events = 40", "").await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let batch: Vec<Value> = (0..25)
            .map(|k| {
                let id = format!("c{n}-{k}");
                ids.push(id.clone());
                json!({"type": "track", "messageId": id, "userId": format!("u{k}"), "event": "Tick",
                    "properties": {"n": n}})
            })
            .collect();
        send(&weir, batch).await;
    }
    // Kill while loads are under way.
    for _ in 0..300 {
        if let Ok(r) = pg.query_one("SELECT count(*) FROM web.tracks", &[]).await
            && r.get::<_, i64>(0) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    weir.kill9();
    weir.respawn();
    wait_pg(&pg, "SELECT count(*) FROM web.tick", ids.len() as i64).await;
    let distinct = pg_rows(&pg, "SELECT count(DISTINCT id) FROM web.tick").await;
    assert_eq!(distinct[0].get::<_, i64>(0), ids.len() as i64);
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", ids.len() as i64).await;
}

/// PostgreSQL refusing connections, then back: nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_loses_nothing() {
    let (url, pg) = fresh_database("outage").await;
    let proxy = Proxy::start().await;
    let via_proxy = url.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let weir = Weir::start(&config(
        &postgres_warehouse(&via_proxy, "flush_interval_ms = 100"),
        "",
    ));
    send(
        &weir,
        vec![json!({"type": "track", "messageId": "before", "userId": "u", "event": "E"})],
    )
    .await;
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 1).await;

    proxy.set_up(false);
    for i in 0..20 {
        send(&weir, vec![json!({"type": "track", "messageId": format!("during-{i}"), "userId": "u", "event": "E"})]).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = pg_rows(&pg, "SELECT count(*) FROM web.tracks").await;
    assert_eq!(
        r[0].get::<_, i64>(0),
        1,
        "nothing can load while PostgreSQL is unreachable"
    );
    assert!(
        weir.log_text().contains("warehouse load failed"),
        "{}",
        weir.log_text()
    );

    proxy.set_up(true);
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 21).await;
    let metrics = support::metrics(&weir).await;
    assert!(
        metrics.contains("weir_warehouse_load_failures_total{warehouse=\"pg\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_warehouse_rows_loaded_total{warehouse=\"pg\"}"),
        "{metrics}"
    );
}

/// DuckDB, the embedded default: the same layout in a file any DuckDB client can open; the
/// loader waits while another process holds the file; duplicates land once.
#[tokio::test(flavor = "multi_thread")]
async fn duckdb_loads_dedupes_and_waits_for_the_file() {
    let weir = Weir::start(&config(
        &duckdb_warehouse("flush_interval_ms = 100"),
        "dedupe = { window_secs = 0 }",
    ));
    let file = weir.data_dir().join("wh.duckdb");
    send(&weir, every_type()).await;
    // The same messageId again (the gateway's dedupe window is 0 here): one row in the end.
    tokio::time::sleep(Duration::from_millis(20)).await;
    send(&weir, vec![every_type()[1].clone()]).await;
    let query = |sql: &str| -> Option<i64> {
        let conn = duckdb::Connection::open(&file).ok()?;
        conn.query_row(sql, [], |r| r.get::<_, i64>(0)).ok()
    };
    let counted = eventually(Duration::from_secs(30), || {
        (query("SELECT count(*) FROM web.identifies") == Some(3)).then_some(())
    });
    assert!(counted.is_some(), "{}", weir.log_text());
    assert_eq!(
        query("SELECT count(*) FROM web.tracks"),
        Some(2),
        "a duplicate lands once"
    );
    assert_eq!(
        query("SELECT count(*) FROM web.order_completed WHERE id = 't1'"),
        Some(1)
    );
    assert_eq!(query("SELECT count(*) FROM web.users"), Some(1));
    {
        let conn = duckdb::Connection::open(&file).unwrap();
        let plan: String = conn
            .query_row("SELECT plan FROM web.users WHERE id = 'u1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(plan, "pro");
        let ty: String = conn
            .query_row(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = 'web' \
                 AND table_name = 'tracks' AND column_name = 'timestamp'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ty, "TIMESTAMP WITH TIME ZONE");
        let utc: i64 = conn
            .query_row(
                "SELECT epoch_ms(\"timestamp\") FROM web.tracks WHERE id = 't1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(utc, 1_714_557_900_000, "2024-05-01T10:05:00Z, in UTC");
    }

    // Hold the file as another process would (a writer connection), send more: the loader
    // waits, and loads once the file is free.
    let held = duckdb::Connection::open(&file).unwrap();
    send(
        &weir,
        vec![json!({"type": "track", "messageId": "late", "userId": "u9", "event": "Late"})],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(held);
    let late = eventually(Duration::from_secs(30), || {
        (query("SELECT count(*) FROM web.late") == Some(1)).then_some(())
    });
    assert!(late.is_some(), "{}", weir.log_text());
    assert_eq!(query("SELECT count(DISTINCT id) FROM web.tracks"), Some(3));
}

/// DuckDB, the default engine: SIGKILL while loads are under way, restart, and every event is
/// in its tables once. Then repeats of events the first process loaded (the gateway's dedupe
/// window is 0 here, so they reach the log) still land once: the new process knows the file's
/// ids without having loaded them itself.
#[tokio::test(flavor = "multi_thread")]
async fn duckdb_survives_a_crash_and_knows_its_ids_after_a_restart() {
    let mut weir = Weir::start(&config(
        &duckdb_warehouse("flush_interval_ms = 50\nflush_events = 40"),
        "dedupe = { window_secs = 0 }",
    ));
    let file = weir.data_dir().join("wh.duckdb");
    let tick = |id: &str, n: usize| {
        json!({"type": "track", "messageId": id, "userId": format!("u{}", n % 25), "event": "Tick",
            "properties": {"n": n}})
    };
    let mut ids = Vec::new();
    for n in 0..40 {
        let batch: Vec<Value> = (0..25)
            .map(|k| {
                let id = format!("c{n}-{k}");
                let event = tick(&id, n);
                ids.push(id);
                event
            })
            .collect();
        send(&weir, batch).await;
    }
    // Kill once loads are under way.
    support::metrics_containing(
        &weir,
        "weir_warehouse_rows_loaded_total{",
        Duration::from_secs(30),
    )
    .await;
    weir.kill9();
    weir.respawn();
    let loaded = duckdb_texts(&weir, &file, "SELECT id FROM web.tick", ids.len());
    let distinct: std::collections::HashSet<&String> = loaded.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "each event once");
    duckdb_texts(&weir, &file, "SELECT id FROM web.tracks", ids.len());

    // Events of the first process again, with new ones.
    let mut again: Vec<Value> = ids[..30].iter().map(|id| tick(id, 0)).collect();
    again.extend((0..5).map(|k| tick(&format!("new-{k}"), 99)));
    send(&weir, again).await;
    // Loaded after them: once it is there, so are they.
    send(&weir, vec![tick("last", 100)]).await;
    duckdb_texts(
        &weir,
        &file,
        "SELECT id FROM web.tracks WHERE id = 'last'",
        1,
    );
    let loaded = duckdb_texts(&weir, &file, "SELECT id FROM web.tracks", ids.len() + 6);
    let distinct: std::collections::HashSet<&String> = loaded.iter().collect();
    assert_eq!(distinct.len(), ids.len() + 6, "repeats land once");
    assert!(distinct.contains(&"new-4".to_string()));
    duckdb_texts(&weir, &file, "SELECT id FROM web.tick", ids.len() + 6);
}

/// Repeats of events loaded earlier (the gateway's dedupe window is 0 here, so they reach the
/// log) land once in PostgreSQL: the load the primary key refuses is redone with only the rows
/// that are new, and those rows still arrive.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_loads_a_repeated_message_id_once() {
    let (weir, pg) = start_with_postgres(
        "repeats",
        "flush_interval_ms = 100",
        "dedupe = { window_secs = 0 }",
    )
    .await;
    send(&weir, every_type()).await;
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 2).await;
    // t1 and i1 again, in one batch with a new track and a new identify.
    let mut again = vec![every_type()[1].clone(), every_type()[0].clone()];
    again.push(
        json!({"type": "track", "messageId": "t3", "userId": "u3", "event": "Order Completed",
        "properties": {"revenue": 7}, "timestamp": "2024-05-04T08:00:00.000Z"}),
    );
    again.push(
        json!({"type": "identify", "messageId": "i3", "userId": "u3",
        "traits": {"plan": "free"}, "timestamp": "2024-05-04T08:00:00.000Z"}),
    );
    send(&weir, again).await;
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 3).await;
    for (table, n) in [
        ("tracks", 3i64),
        ("order_completed", 3),
        ("identifies", 4),
        ("users", 2),
    ] {
        let r = pg_rows(&pg, &format!("SELECT count(*) FROM web.{table}")).await;
        assert_eq!(r[0].get::<_, i64>(0), n, "{table}");
    }
    let r = pg_rows(
        &pg,
        "SELECT count(*) FROM web.order_completed WHERE id = 't1'",
    )
    .await;
    assert_eq!(r[0].get::<_, i64>(0), 1);
}

/// `users` over several loads: an identify newer than the user's history changes only the
/// traits it has (the others keep their value), one that arrives late (older `timestamp`)
/// changes only the traits no newer identify has, and a new user gets its row.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_users_keep_the_latest_traits_across_loads() {
    let (weir, pg) = start_with_postgres("users", "flush_interval_ms = 100", "").await;
    let identify = |id: &str, user: &str, traits: Value, ts: &str| {
        json!({"type": "identify", "messageId": id, "userId": user, "traits": traits,
            "timestamp": ts})
    };
    let user = |id: &'static str| {
        let pg = &pg;
        async move {
            let r = pg_rows(
                pg,
                &format!(
                    // As JSON: `company` is not a column until an identify has one.
                    "SELECT j->>'plan', j->>'email', j->>'company', to_char(received_at, 'YYYY') \
                     FROM (SELECT to_jsonb(u) AS j, received_at FROM web.users u WHERE id = '{id}') r"
                ),
            )
            .await;
            assert_eq!(r.len(), 1, "one users row for {id}");
            let cell = |i| r[0].get::<_, Option<String>>(i);
            (cell(0), cell(1), cell(2), cell(3))
        }
    };
    let s = |v: &str| Some(v.to_owned());
    let year = s(&time::OffsetDateTime::now_utc().year().to_string());
    // Each step one load: its identifies, then (user, plan, email, company) after it.
    let steps = [
        (
            vec![identify(
                "i1",
                "u1",
                json!({"plan": "free", "email": "ann@example.com"}),
                "2024-05-01T00:00:00Z",
            )],
            vec![("u1", s("free"), s("ann@example.com"), None)],
        ),
        // Newer: plan changes, email stays.
        (
            vec![identify(
                "i2",
                "u1",
                json!({"plan": "pro"}),
                "2024-05-03T00:00:00Z",
            )],
            vec![("u1", s("pro"), s("ann@example.com"), None)],
        ),
        // Late: its plan is older than "pro" and loses; its company is the only one and counts.
        (
            vec![identify(
                "i0",
                "u1",
                json!({"plan": "trial", "company": "acme"}),
                "2024-04-01T00:00:00Z",
            )],
            vec![("u1", s("pro"), s("ann@example.com"), s("acme"))],
        ),
        // Newer again, in one batch with a new user and a late identify of that user.
        (
            vec![
                identify(
                    "i3",
                    "u1",
                    json!({"email": "ann@corp.example"}),
                    "2024-05-05T00:00:00Z",
                ),
                identify("i4", "u2", json!({"plan": "team"}), "2024-05-05T00:00:00Z"),
                identify(
                    "i5",
                    "u2",
                    json!({"plan": "free", "company": "initech"}),
                    "2024-05-04T00:00:00Z",
                ),
            ],
            vec![
                ("u1", s("pro"), s("ann@corp.example"), s("acme")),
                ("u2", s("team"), None, s("initech")),
            ],
        ),
    ];
    let mut identifies = 0;
    for (events, want) in steps {
        identifies += events.len() as i64;
        send(&weir, events).await;
        wait_pg(&pg, "SELECT count(*) FROM web.identifies", identifies).await;
        for (id, plan, email, company) in want {
            assert_eq!(
                user(id).await,
                (plan, email, company, year.clone()),
                "users row of {id} after {identifies} identifies"
            );
        }
    }
    let r = pg_rows(&pg, "SELECT count(*) FROM web.users").await;
    assert_eq!(r[0].get::<_, i64>(0), 2);
}

/// Whatever order identifies arrive in, over many loads, `users` holds what a recompute of
/// every user from all of `identifies` gives (the loader upserts most users from their batch
/// and recomputes the ones with late identifies; both must agree).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_users_match_a_full_recompute_after_loads_in_any_order() {
    let (weir, pg) = start_with_postgres("users_random", "flush_interval_ms = 100", "").await;
    // splitmix64: the same events every run.
    let mut state = 0x5eed_u64;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let base = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_714_521_600);
    let mut sent = 0i64;
    for round in 0..6u64 {
        let events: Vec<Value> = (0..40u64)
            .map(|i| {
                let n = round * 40 + i;
                // Mostly later than the rounds before, a quarter up to ten rounds' worth
                // earlier; every timestamp distinct (a tie has no single latest value).
                let late = if next(4) == 0 { next(10) * 40 } else { 0 };
                let at = base + Duration::from_secs((n + 400 - late) * 60 + n % 60);
                let mut traits = serde_json::Map::new();
                if round == 0 || next(2) == 0 {
                    traits.insert(
                        "plan".into(),
                        json!(["free", "pro", "team"][next(3) as usize]),
                    );
                }
                if round == 0 || next(3) == 0 {
                    traits.insert("email".into(), json!(format!("e{n}@example.com")));
                }
                if round == 0 || next(3) == 0 {
                    traits.insert("age".into(), json!(18 + next(60)));
                }
                json!({"type": "identify", "messageId": format!("r{n}"),
                    "userId": format!("u{}", next(12)), "traits": traits,
                    "timestamp": weir::timestamp::format(at)})
            })
            .collect();
        sent += events.len() as i64;
        send(&weir, events).await;
        wait_pg(&pg, "SELECT count(*) FROM web.identifies", sent).await;
        let latest = |c: &str| {
            format!(
                "(array_agg({c} ORDER BY \"timestamp\" DESC) FILTER (WHERE {c} IS NOT NULL))[1]"
            )
        };
        let expected = format!(
            "SELECT user_id, {}, {}, {} FROM web.identifies GROUP BY user_id",
            latest("plan"),
            latest("email"),
            latest("age")
        );
        let actual = "SELECT id, plan, email, age FROM web.users";
        for (a, b) in [(&expected[..], actual), (actual, &expected[..])] {
            let r = pg_rows(&pg, &format!("SELECT count(*) FROM ({a} EXCEPT {b}) d")).await;
            assert_eq!(
                r[0].get::<_, i64>(0),
                0,
                "after round {round}, rows of one not in the other:\n{a}\nEXCEPT\n{b}"
            );
        }
    }
}

/// A NUL character (`\u0000`, valid JSON) in a property, an id or a user id does not stop the
/// warehouse: PostgreSQL text cannot hold it, so it is dropped from the string, and the events
/// after it load too. DuckDB gets the same values.
#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_in_a_string_does_not_stop_the_load() {
    let (url, pg) = fresh_database("nul").await;
    let both = format!(
        "{}{}",
        postgres_warehouse(&url, "flush_interval_ms = 100"),
        duckdb_warehouse("flush_interval_ms = 100")
    );
    let weir = Weir::start(&config(&both, ""));
    send(
        &weir,
        vec![
            json!({"type": "track", "messageId": "t\u{0}1", "userId": "u\u{0}1", "event": "Clicked",
                "properties": {"note": "a\u{0}b", "list": ["x\u{0}y"]}}),
            json!({"type": "identify", "messageId": "i1", "userId": "u\u{0}1",
                "traits": {"name": "Ann\u{0}"}}),
        ],
    )
    .await;
    send(
        &weir,
        vec![json!({"type": "track", "messageId": "t2", "userId": "u2", "event": "Clicked"})],
    )
    .await;
    wait_pg(&pg, "SELECT count(*) FROM web.clicked", 2).await;
    let r = pg_rows(
        &pg,
        "SELECT id, user_id, note, list FROM web.clicked WHERE id <> 't2'",
    )
    .await;
    let text = |i| r[0].get::<_, String>(i);
    assert_eq!(
        (text(0), text(1), text(2)),
        ("t1".into(), "u1".into(), "ab".into())
    );
    assert_eq!(text(3), r#"["xy"]"#);
    let u = pg_rows(&pg, "SELECT id, name FROM web.users").await;
    assert_eq!(
        (u[0].get::<_, String>(0), u[0].get::<_, String>(1)),
        ("u1".into(), "Ann".into())
    );
    let file = weir.data_dir().join("wh.duckdb");
    let notes = duckdb_texts(
        &weir,
        &file,
        "SELECT note FROM web.clicked WHERE note IS NOT NULL",
        1,
    );
    assert_eq!(notes, ["ab"]);
}

/// An event PostgreSQL refuses (900 properties: a row over its 8 KB limit) does not stop the
/// warehouse: it goes to the warehouse's dead-letter queue with the reason, and the events
/// around it, in its batch and after it, load.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_the_warehouse_refuses_is_dead_lettered_and_the_rest_loads() {
    let (weir, pg) = start_with_postgres("refused", "flush_interval_ms = 100", "").await;
    let wide: serde_json::Map<String, Value> = (0..900)
        .map(|i| (format!("p{i}"), json!("abcdefghij")))
        .collect();
    let track = |id: &str, properties: Value| {
        json!({"type": "track", "messageId": id, "userId": "u1", "event": "Clicked",
            "properties": properties})
    };
    send(
        &weir,
        vec![
            track("a", json!({"n": 1})),
            track("wide", Value::Object(wide)),
            track("b", json!({"n": 2})),
        ],
    )
    .await;
    wait_pg(&pg, "SELECT count(*) FROM web.clicked", 2).await;
    send(&weir, vec![track("c", json!({"n": 3}))]).await;
    wait_pg(&pg, "SELECT count(*) FROM web.clicked", 3).await;
    let ids: Vec<String> = pg_rows(&pg, "SELECT id FROM web.clicked ORDER BY id")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let r = pg_rows(&pg, "SELECT count(*) FROM web.tracks").await;
    assert_eq!(
        r[0].get::<_, i64>(0),
        3,
        "no row of the refused event anywhere"
    );
    let entries = eventually(Duration::from_secs(10), || {
        let e = support::dlq_list(&weir);
        (!e.is_empty()).then_some(e)
    })
    .expect("a dead letter");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["entry"]["stage"], "warehouse:pg");
    assert_eq!(entries[0]["entry"]["event"]["messageId"], "wide");
    let error = entries[0]["entry"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("row is too big"), "{error}");
}

/// The COPY encoder refuses a row whose cells are not of their columns' types (a mapper bug)
/// instead of writing a string's bytes into a bigint column: the load fails and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_copy_refuses_cells_of_the_wrong_type() {
    use weir::warehouse::postgres::copy_rows;
    use weir::warehouse::schema::{Cell, ColumnType};
    let (_, mut pg) = fresh_database("copy_types").await;
    pg.batch_execute("CREATE TABLE t (a text, b bigint)")
        .await
        .unwrap();
    let columns = [
        ("a".to_owned(), ColumnType::Text),
        ("b".to_owned(), ColumnType::Int),
    ];
    let good = vec![Cell::Text("x".into()), Cell::Int(1)];
    // Eight bytes of text would pass for a bigint if written as they are.
    let bad = vec![Cell::Text("y".into()), Cell::Text("abcdefgh".into())];
    let tx = pg.transaction().await.unwrap();
    let result = copy_rows(&tx, "t", &columns, [&good, &bad]).await;
    assert!(result.is_err(), "the COPY went through: {result:?}");
    drop(tx);
    let tx = pg.transaction().await.unwrap();
    assert_eq!(copy_rows(&tx, "t", &columns, [&good]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let r = pg_rows(&pg, "SELECT a, b FROM t").await;
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].get::<_, String>(0), r[0].get::<_, i64>(1)),
        ("x".into(), 1)
    );
}

/// A TCP forwarder to PostgreSQL that can be switched off (connections refused) and on.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Proxy { port, up }
    }

    /// Off: open connections are cut and new ones closed at once.
    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A warehouse's own filter chain: PII masked for this warehouse only; an event a filter fails
/// on goes to the warehouse's dead-letter queue instead of the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_warehouse_filter_chain_applies_to_it_alone() {
    let plugins = format!(
        "[[plugins]]\nname = \"pii\"\npath = \"{}\"\nkind = \"filter\"\nconfig = {{ paths = [\"traits.email\"], mode = \"redact\" }}\n\n\
         [[plugins]]\nname = \"strict\"\npath = \"{}\"\n",
        weir::plugin::bundled::path("pii-mask").display(),
        weir::plugin::bundled::path("fault-panic").display()
    );
    let weir = Weir::start(&config(
        &format!(
            "{}\n{plugins}",
            duckdb_warehouse("flush_interval_ms = 100\nfilters = [\"pii\", \"strict\"]")
        ),
        "",
    ));
    send(
        &weir,
        vec![
            json!({"type": "identify", "messageId": "ok1", "userId": "u1", "traits": {"email": "ann@example.com"}}),
            json!({"type": "identify", "messageId": "bad", "userId": "u2", "traits": {"email": "bob@example.com"},
                "properties": {"poison": true}}),
            json!({"type": "identify", "messageId": "ok2", "userId": "u3", "traits": {"email": "cy@example.com"}}),
        ],
    )
    .await;
    let file = weir.data_dir().join("wh.duckdb");
    let loaded = duckdb_texts(
        &weir,
        &file,
        "SELECT email FROM web.identifies ORDER BY id",
        2,
    );
    assert_eq!(loaded, ["[redacted]", "[redacted]"]);
    // The processed log (and any other consumer) still has the original events.
    let processed = weir.dump("processed");
    assert_eq!(processed[0]["event"]["traits"]["email"], "ann@example.com");
    // The failed event is in the warehouse's dead-letter queue.
    let entries = support::dlq_list(&weir);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["entry"]["stage"], "warehouse:wh");
    assert_eq!(entries[0]["entry"]["event"]["messageId"], "bad");
}

/// Consent per warehouse: the bundled `consent` filter in the PostgreSQL warehouse's `filters`
/// keeps events whose consent denies "Advertising" out of its tables, while a warehouse without
/// the filter (DuckDB) loads every event. Consent drops are counted, not dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn consent_keeps_denied_events_out_of_one_warehouse() {
    let (url, pg) = fresh_database("consent").await;
    let warehouses = format!(
        "[[warehouses]]\nname = \"ads\"\nengine = \"postgres\"\nurl = \"{url}\"\nsources = [\"web\"]\nflush_interval_ms = 100\nfilters = [\"consent\"]\n\n\
         [[warehouses]]\nname = \"all\"\nengine = \"duckdb\"\nsources = [\"web\"]\nflush_interval_ms = 100\n\n\
         [[plugins]]\nname = \"consent\"\npath = \"{}\"\nkind = \"filter\"\nconfig = {{ categories = [\"Advertising\"] }}\n",
        weir::plugin::bundled::path("consent").display()
    );
    let weir = Weir::start(&config(&warehouses, ""));
    send(&weir, support::advertising_consent_events()).await;
    let file = weir.data_dir().join("all.duckdb");
    let everything = duckdb_texts(&weir, &file, "SELECT id FROM web.tracks ORDER BY id", 4);
    assert_eq!(
        everything,
        [
            "granted",
            "no-consent-info",
            "rudder-denied",
            "segment-denied"
        ]
    );
    wait_pg(&pg, "SELECT count(*) FROM web.tracks", 2).await;
    // A moment more, so a denied event loaded late would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = pg_rows(&pg, "SELECT id FROM web.ad_clicked ORDER BY id")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["granted", "no-consent-info"]);
    let tracks = pg_rows(&pg, "SELECT count(*) FROM web.tracks").await;
    assert_eq!(tracks[0].get::<_, i64>(0), 2);
    let metrics = support::metrics(&weir).await;
    assert!(
        metrics.contains("consent_dropped") && metrics.contains(r#"category="Advertising""#),
        "{metrics}"
    );
    assert!(
        support::dlq_list(&weir).is_empty(),
        "a consent drop is not a failure"
    );
}
