//! DuckDB loader: the embedded default. The file is opened per load and closed after, because a
//! DuckDB file has one writer process at a time: between loads anyone can open it with `duckdb`
//! or any DuckDB client. While someone else holds it, the loader waits (the events stay in the
//! log).
//!
//! Rows go through the appender into a staging table, then into the target with an anti-join on
//! `id` (tables have no primary key: DuckDB cannot add columns to a table with an index).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use duckdb::types::Value;
use duckdb::{Connection, appender_params_from_iter};
use time::OffsetDateTime;

use super::loader::{LoadStats, Loader, TableStatus, WarehouseError, catalog_type, discards_table};
use super::schema::{Catalog, Cell, ColumnType, SchemaLoad};
use super::sql::{self, Dialect, ident, qualified};
use crate::ids::Offset;

/// How long a load waits for another process to release the file before giving up this round.
const LOCK_WAIT: Duration = Duration::from_secs(30);

pub struct DuckDb;

impl Dialect for DuckDb {
    fn type_name(&self, ty: ColumnType) -> &'static str {
        match ty {
            ColumnType::Bool => "BOOLEAN",
            ColumnType::Int => "BIGINT",
            ColumnType::Float => "DOUBLE",
            ColumnType::Timestamp => "TIMESTAMPTZ",
            ColumnType::Text => "VARCHAR",
        }
    }

    fn primary_keys(&self) -> bool {
        false
    }
}

/// Staging columns: timestamps travel as microseconds since the epoch (the appender takes plain
/// integers), converted with `to_timestamp` on the way into the target.
fn stage_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Timestamp => "BIGINT",
        other => DuckDb.type_name(other),
    }
}

fn value(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Boolean(*b),
        Cell::Int(i) => Value::BigInt(*i),
        Cell::Float(f) => Value::Double(*f),
        Cell::Timestamp(t) => Value::BigInt((t.unix_timestamp_nanos() / 1_000) as i64),
        Cell::Text(s) => Value::Text(s.clone()),
    }
}

fn err(e: duckdb::Error) -> WarehouseError {
    WarehouseError::Load(e.to_string())
}

pub struct DuckDbLoader {
    path: PathBuf,
    warehouse: String,
}

impl DuckDbLoader {
    pub fn new(path: PathBuf, warehouse: &str) -> DuckDbLoader {
        DuckDbLoader {
            path,
            warehouse: warehouse.to_owned(),
        }
    }

    /// Opens the file, waiting while another process holds it.
    fn connect(&self) -> Result<Connection, WarehouseError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                WarehouseError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let started = Instant::now();
        loop {
            match Connection::open(&self.path) {
                Ok(c) => return Ok(c),
                Err(e)
                    if e.to_string().to_lowercase().contains("lock")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    tracing::debug!(path = %self.path.display(), "the DuckDB file is held by another process; waiting");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(WarehouseError::Unavailable(format!(
                        "cannot open {}: {e}",
                        self.path.display()
                    )));
                }
            }
        }
    }
}

/// Creates `_weir.<name>` shaped like `columns` and appends `rows` to it.
fn stage(
    conn: &Connection,
    name: &str,
    columns: &[(String, ColumnType)],
    rows: &[Vec<Cell>],
) -> duckdb::Result<()> {
    let defs: Vec<String> = columns
        .iter()
        .map(|(c, t)| format!("{} {}", ident(c), stage_type(*t)))
        .collect();
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TABLE _weir.{} ({})",
        ident(name),
        defs.join(", ")
    ))?;
    let mut app = conn.appender_to_db(name, "_weir")?;
    for row in rows {
        app.append_row(appender_params_from_iter(row.iter().map(value)))?;
    }
    app.flush()?;
    Ok(())
}

/// The select list turning staging columns into target columns.
fn converted(columns: &[(String, ColumnType)]) -> String {
    columns
        .iter()
        .map(|(c, t)| match t {
            ColumnType::Timestamp => format!("to_timestamp(s.{q} / 1000000.0)", q = ident(c)),
            _ => format!("s.{}", ident(c)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn load_schema(
    conn: &Connection,
    load: &SchemaLoad,
    stage_n: &mut usize,
) -> duckdb::Result<LoadStats> {
    let mut stats = LoadStats::default();
    let schema = &load.schema;
    conn.execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))?;
    for (table, t) in &load.tables {
        for stmt in sql::ddl(&DuckDb, schema, table, t) {
            conn.execute_batch(&stmt)?;
        }
        if table == "users" || t.rows.is_empty() {
            continue;
        }
        *stage_n += 1;
        let name = format!("stage_{stage_n}");
        stage(conn, &name, &t.columns, &t.rows)?;
        let cols: Vec<String> = t.columns.iter().map(|(c, _)| ident(c)).collect();
        let target = qualified(schema, table);
        let n = conn.execute(
            &format!(
                "INSERT INTO {target} ({cols}) SELECT {exprs} FROM \
                 (SELECT *, row_number() OVER (PARTITION BY \"id\") AS _weir_rn FROM _weir.{stage}) s \
                 WHERE s._weir_rn = 1 AND NOT EXISTS (SELECT 1 FROM {target} t WHERE t.\"id\" = s.\"id\")",
                cols = cols.join(", "),
                exprs = converted(&t.columns),
                stage = ident(&name),
            ),
            [],
        )? as u64;
        conn.execute_batch(&format!("DROP TABLE _weir.{}", ident(&name)))?;
        stats.rows += n;
        stats.tables.push((table.clone(), n));
    }
    if !load.discards.is_empty() {
        let d = discards_table(load);
        for stmt in sql::ddl(&DuckDb, schema, "discards", &d) {
            conn.execute_batch(&stmt)?;
        }
        *stage_n += 1;
        let name = format!("stage_{stage_n}");
        stage(conn, &name, &d.columns, &d.rows)?;
        let cols: Vec<String> = d.columns.iter().map(|(c, _)| ident(c)).collect();
        conn.execute_batch(&format!(
            "INSERT INTO {} ({}) SELECT {} FROM _weir.{} s; DROP TABLE _weir.{}",
            qualified(schema, "discards"),
            cols.join(", "),
            converted(&d.columns),
            ident(&name),
            ident(&name)
        ))?;
        stats.discards += d.rows.len() as u64;
    }
    if let Some(users) = load.tables.get("users")
        && !load.users.is_empty()
    {
        *stage_n += 1;
        let name = format!("stage_{stage_n}");
        let rows: Vec<Vec<Cell>> = load
            .users
            .iter()
            .map(|u| vec![Cell::Text(u.clone())])
            .collect();
        stage(conn, &name, &[("id".into(), ColumnType::Text)], &rows)?;
        let affected = format!("_weir.{}", ident(&name));
        for stmt in sql::recompute_users(schema, users, &affected, "now()") {
            conn.execute_batch(&stmt)?;
        }
        conn.execute_batch(&format!("DROP TABLE {affected}"))?;
    }
    Ok(stats)
}

fn bookkeeping(conn: &Connection) -> duckdb::Result<()> {
    conn.execute_batch(
        "CREATE SCHEMA IF NOT EXISTS _weir; \
         CREATE TABLE IF NOT EXISTS _weir.loads (warehouse VARCHAR, next_offset BIGINT, loaded_at TIMESTAMPTZ)",
    )
}

impl Loader for DuckDbLoader {
    fn open(&mut self, schemas: &[String]) -> Result<(Catalog, Option<Offset>), WarehouseError> {
        let conn = self.connect()?;
        bookkeeping(&conn).map_err(err)?;
        let mut catalog = Catalog::default();
        let mut stmt = conn
            .prepare(
                "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns \
                 ORDER BY table_schema, table_name, ordinal_position",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (s, t, c, ty) = row.map_err(err)?;
            if schemas.contains(&s) {
                catalog
                    .schemas
                    .entry(s)
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(c, catalog_type(&ty));
            }
        }
        drop(stmt);
        let offset: Option<i64> = conn
            .query_row(
                "SELECT max(next_offset) FROM _weir.loads WHERE warehouse = ?",
                [&self.warehouse],
                |r| r.get(0),
            )
            .map_err(err)?;
        Ok((catalog, offset.map(|o| Offset(o as u64))))
    }

    fn load(&mut self, loads: &[SchemaLoad], next: Offset) -> Result<LoadStats, WarehouseError> {
        let mut conn = self.connect()?;
        bookkeeping(&conn).map_err(err)?;
        let tx = conn.transaction().map_err(err)?;
        let mut stats = LoadStats::default();
        let mut stage_n = 0;
        for load in loads {
            stats.merge(load_schema(&tx, load, &mut stage_n).map_err(err)?);
        }
        tx.execute(
            "DELETE FROM _weir.loads WHERE warehouse = ?",
            [&self.warehouse],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO _weir.loads VALUES (?, ?, now())",
            duckdb::params![self.warehouse, next.0 as i64],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        // Closing the connection releases the file for other processes.
        drop(conn);
        Ok(stats)
    }

    fn status(&mut self, schemas: &[String]) -> Result<Vec<TableStatus>, WarehouseError> {
        let (catalog, _) = self.open(schemas)?;
        let conn = self.connect()?;
        let mut out = Vec::new();
        for (schema, tables) in &catalog.schemas {
            for (table, cols) in tables {
                let last = if cols.contains_key("uuid_ts") {
                    "epoch_us(max(\"uuid_ts\"))"
                } else {
                    "NULL::BIGINT"
                };
                let (rows, last): (i64, Option<i64>) = conn
                    .query_row(
                        &format!("SELECT count(*), {last} FROM {}", qualified(schema, table)),
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(err)?;
                out.push(TableStatus {
                    schema: schema.clone(),
                    table: table.clone(),
                    rows: rows as u64,
                    last_load: last.and_then(|us| {
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
                    }),
                });
            }
        }
        out.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        Ok(out)
    }
}
