//! DuckDB loader: the embedded default. A DuckDB file has one writer process at a time, so the
//! loader closes it whenever it has nothing more to load right away: between loads anyone can
//! open it with `duckdb` or any DuckDB client. Loads that follow each other (a backlog) share
//! one opening, for at most `MAX_HOLD`: closing checkpoints the file, which rewrites the last,
//! partly filled row group of every table it touched, so closing after each of them would make
//! a backfill quadratic. While someone else holds the file, the loader waits (the events stay in
//! the log).
//!
//! Per table, the rows whose `id` is not there yet go in through the appender as Arrow
//! batches, straight into the target. Tables have no primary key (DuckDB cannot add columns to
//! a table with an index), so which ids a table holds is known from `LoadedIds`: the ids of the
//! table as hashes in memory, filled by one scan of its `id` column per session. Only ids whose
//! hash is there are looked for in the table itself (one scan of the `id` column against them):
//! loads do not slow down as tables grow.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duckdb::Connection;
use duckdb::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, PrimitiveArray, PrimitiveBuilder, StringBuilder,
};
use duckdb::arrow::datatypes::{
    ArrowPrimitiveType, Field, Float64Type, Int64Type, Schema, TimestampMicrosecondType,
};
use duckdb::arrow::record_batch::RecordBatch;
use time::OffsetDateTime;

use super::loaded_ids::{LoadedIds, Pending};
use super::loader::{
    LoadStats, Loader, TableStatus, WarehouseError, catalog_type, discards_table, fresh_rows,
    ids_of, row_ids,
};
use super::schema::{Catalog, Cell, ColumnType, SchemaLoad};
use super::sql::{self, Dialect, ident, qualified};
use crate::ids::Offset;

/// How long a load waits for another process to release the file before giving up this round.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How long the loader keeps the file open while loads follow each other (a backlog): then it
/// closes it and opens it again, so someone waiting for it gets a turn.
const MAX_HOLD: Duration = Duration::from_secs(10);

/// The connection's temporary tables of the ids a table may hold already and of the users a
/// load touched.
const CANDIDATE_IDS: &str = "weir_candidate_ids";
const AFFECTED_USERS: &str = "weir_affected_users";

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

/// `rows` (cells of `columns`' types, as the mapper makes them) as one Arrow batch, column by
/// column: the appender takes it in vector-sized chunks, instead of a call and a type switch
/// per value. Timestamps are microseconds in UTC (`TIMESTAMPTZ`).
pub fn record_batch(
    columns: &[(String, ColumnType)],
    rows: &[&Vec<Cell>],
) -> Result<RecordBatch, WarehouseError> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (at, (name, ty)) in columns.iter().enumerate() {
        let cells = rows.iter().map(|row| row.get(at).unwrap_or(&Cell::Null));
        let n = rows.len();
        let array: Result<ArrayRef, &Cell> = match ty {
            ColumnType::Text => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                fill(cells, |cell| {
                    match cell {
                        Cell::Text(s) => b.append_value(s),
                        Cell::Null => b.append_null(),
                        _ => return false,
                    }
                    true
                })
                .map(|()| Arc::new(b.finish()) as ArrayRef)
            }
            ColumnType::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                fill(cells, |cell| {
                    match cell {
                        Cell::Bool(v) => b.append_value(*v),
                        Cell::Null => b.append_null(),
                        _ => return false,
                    }
                    true
                })
                .map(|()| Arc::new(b.finish()) as ArrayRef)
            }
            ColumnType::Int => primitive::<Int64Type>(cells, n, |cell| match cell {
                Cell::Int(i) => Some(*i),
                _ => None,
            })
            .map(|a| Arc::new(a) as ArrayRef),
            ColumnType::Float => primitive::<Float64Type>(cells, n, |cell| match cell {
                Cell::Float(f) => Some(*f),
                _ => None,
            })
            .map(|a| Arc::new(a) as ArrayRef),
            ColumnType::Timestamp => {
                primitive::<TimestampMicrosecondType>(cells, n, |cell| match cell {
                    Cell::Timestamp(t) => Some((t.unix_timestamp_nanos() / 1_000) as i64),
                    _ => None,
                })
                .map(|a| Arc::new(a.with_timezone("UTC")) as ArrayRef)
            }
        };
        let array = array.map_err(|cell| {
            WarehouseError::Load(format!(
                "column {name} of type {} was given {cell:?}",
                ty.name()
            ))
        })?;
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| WarehouseError::Load(format!("cannot build the batch: {e}")))
}

/// Feeds each cell to `put`, which appends it or says `false` when it is not of the column's
/// type; the first such cell is the error.
fn fill<'c>(
    cells: impl Iterator<Item = &'c Cell>,
    mut put: impl FnMut(&Cell) -> bool,
) -> Result<(), &'c Cell> {
    for cell in cells {
        if !put(cell) {
            return Err(cell);
        }
    }
    Ok(())
}

/// A column of fixed-width values (`value` gives a cell's, `None` if it is not of the type).
fn primitive<'c, T: ArrowPrimitiveType>(
    cells: impl Iterator<Item = &'c Cell>,
    n: usize,
    value: impl Fn(&Cell) -> Option<T::Native>,
) -> Result<PrimitiveArray<T>, &'c Cell> {
    let mut b = PrimitiveBuilder::<T>::with_capacity(n);
    fill(cells, |cell| {
        match (cell, value(cell)) {
            (_, Some(v)) => b.append_value(v),
            (Cell::Null, None) => b.append_null(),
            _ => return false,
        }
        true
    })?;
    Ok(b.finish())
}

/// Appends `rows` to the `columns` of `schema.table` (a `catalog` of `None` is the file's).
pub fn append(
    conn: &Connection,
    catalog: Option<&str>,
    schema: &str,
    table: &str,
    columns: &[(String, ColumnType)],
    rows: &[&Vec<Cell>],
) -> Result<u64, WarehouseError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let batch = record_batch(columns, rows)?;
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
    let mut app = match catalog {
        Some(catalog) => {
            conn.appender_with_columns_to_catalog_and_db(table, catalog, schema, &names)
        }
        None => conn.appender_with_columns_to_db(table, schema, &names),
    }
    .map_err(err)?;
    app.append_record_batch(batch).map_err(err)?;
    app.flush().map_err(err)?;
    Ok(rows.len() as u64)
}

/// Fills the connection's temporary one-column table `name` with `ids`.
fn temp_ids<'a>(
    conn: &Connection,
    name: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), WarehouseError> {
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE {} (\"id\" VARCHAR)",
        ident(name)
    ))
    .map_err(err)?;
    let rows: Vec<Vec<Cell>> = ids
        .into_iter()
        .map(|id| vec![Cell::Text(id.to_owned())])
        .collect();
    let rows: Vec<&Vec<Cell>> = rows.iter().collect();
    append(
        conn,
        Some("temp"),
        "main",
        name,
        &[("id".into(), ColumnType::Text)],
        &rows,
    )
    .map(drop)
}

fn err(e: duckdb::Error) -> WarehouseError {
    WarehouseError::Load(e.to_string())
}

pub struct DuckDbLoader {
    path: PathBuf,
    warehouse: String,
    /// The open file while loads follow each other, and when it was opened.
    held: Option<(Connection, Instant)>,
    /// The ids in each table loaded this session.
    ids: LoadedIds,
}

impl DuckDbLoader {
    pub fn new(path: PathBuf, warehouse: &str) -> DuckDbLoader {
        DuckDbLoader {
            path,
            warehouse: warehouse.to_owned(),
            held: None,
            ids: LoadedIds::default(),
        }
    }

    /// The open file: the one held since the last load if it was opened less than `MAX_HOLD`
    /// ago, else the file opened anew (closing it first lets others in, if they wait).
    fn connection(&mut self) -> Result<&mut Connection, WarehouseError> {
        if self
            .held
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= MAX_HOLD)
        {
            self.held = None;
        }
        if self.held.is_none() {
            let conn = self.connect()?;
            // The load is single-threaded work on small batches: DuckDB's worker threads only
            // spin against the thread mapping the next batch on this machine's cores.
            conn.execute_batch("SET threads = 1").map_err(err)?;
            bookkeeping(&conn).map_err(err)?;
            self.held = Some((conn, Instant::now()));
        }
        match &mut self.held {
            Some((conn, _)) => Ok(conn),
            None => Err(WarehouseError::Unavailable("no connection".into())),
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

/// The ids of `candidates` that `target` holds: one scan of its `id` column, against a
/// temporary table of them.
fn present_ids(
    conn: &Connection,
    target: &str,
    candidates: Vec<&str>,
) -> Result<HashSet<String>, WarehouseError> {
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    temp_ids(conn, CANDIDATE_IDS, candidates)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT \"id\" FROM {target} WHERE \"id\" IN (SELECT \"id\" FROM temp.main.{CANDIDATE_IDS})"
        ))
        .map_err(err)?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
    ids.collect::<Result<_, _>>().map_err(err)
}

/// Fills `ids` with the ids `target` holds, read as Arrow batches.
fn fill_ids(conn: &Connection, ids: &mut LoadedIds, target: &str) -> Result<(), WarehouseError> {
    ids.fill(target, |put| {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT \"id\" FROM {target} WHERE \"id\" IS NOT NULL"
            ))
            .map_err(err)?;
        for batch in stmt.query_arrow([]).map_err(err)? {
            let column = batch.column(0);
            let Some(texts) = column.as_string_opt::<i32>() else {
                return Err(WarehouseError::Load(format!(
                    "the id column of {target} is {}, not text",
                    column.data_type()
                )));
            };
            texts.iter().flatten().for_each(&mut *put);
        }
        Ok(())
    })
}

/// Writes `load`; the ids it wrote go to `pending`, for `ids` once the load commits.
fn load_schema(
    conn: &Connection,
    ids: &mut LoadedIds,
    pending: &mut Pending,
    load: &SchemaLoad,
) -> Result<LoadStats, WarehouseError> {
    let mut stats = LoadStats::default();
    let schema = &load.schema;
    let run = |sql: &str| conn.execute_batch(sql).map_err(err);
    run(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))?;
    for (table, t) in &load.tables {
        for stmt in sql::ddl(&DuckDb, schema, table, t) {
            run(&stmt)?;
        }
        if table == "users" || t.rows.is_empty() {
            continue;
        }
        let target = qualified(schema, table);
        if !ids.knows(&target) {
            fill_ids(conn, ids, &target)?;
        }
        let present = present_ids(conn, &target, ids.candidates(&target, row_ids(t)))?;
        let rows = fresh_rows(t, &present);
        let n = append(conn, None, schema, table, &t.columns, &rows)?;
        pending.wrote(&target, ids_of(t, rows.iter().copied()));
        stats.rows += n;
        stats.tables.push((table.clone(), n));
    }
    if !load.discards.is_empty() {
        let d = discards_table(load);
        for stmt in sql::ddl(&DuckDb, schema, "discards", &d) {
            run(&stmt)?;
        }
        let rows: Vec<&Vec<Cell>> = d.rows.iter().collect();
        stats.discards += append(conn, None, schema, "discards", &d.columns, &rows)?;
    }
    if let Some(users) = load.tables.get("users")
        && !load.users.is_empty()
    {
        temp_ids(conn, AFFECTED_USERS, load.users.iter().map(String::as_str))?;
        let affected = format!("temp.main.{AFFECTED_USERS}");
        for stmt in sql::recompute_users(schema, users, &affected, "now()") {
            run(&stmt)?;
        }
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
        // A new session starts from what the file says: nothing held over from a failed one.
        self.held = None;
        self.ids.clear();
        let warehouse = self.warehouse.clone();
        let conn = self.connection()?;
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
                [&warehouse],
                |r| r.get(0),
            )
            .map_err(err)?;
        Ok((catalog, offset.map(|o| Offset(o as u64))))
    }

    fn load(&mut self, loads: &[SchemaLoad], next: Offset) -> Result<LoadStats, WarehouseError> {
        let warehouse = self.warehouse.clone();
        self.connection()?;
        let (Some((conn, _)), ids) = (&mut self.held, &mut self.ids) else {
            return Err(WarehouseError::Unavailable("no connection".into()));
        };
        let mut pending = Pending::default();
        let result = (|| {
            let tx = conn.transaction().map_err(err)?;
            let mut stats = LoadStats::default();
            for load in loads {
                stats.merge(load_schema(&tx, ids, &mut pending, load)?);
            }
            tx.execute("DELETE FROM _weir.loads WHERE warehouse = ?", [&warehouse])
                .map_err(err)?;
            tx.execute(
                "INSERT INTO _weir.loads VALUES (?, ?, now())",
                duckdb::params![warehouse, next.0 as i64],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(stats)
        })();
        match &result {
            Ok(_) => self.ids.commit(pending),
            Err(_) => self.held = None,
        }
        result
    }

    /// Closing the file (which checkpoints it) lets other processes open it until the next
    /// load.
    fn idle(&mut self) {
        self.held = None;
    }

    fn status(&mut self, schemas: &[String]) -> Result<Vec<TableStatus>, WarehouseError> {
        let (catalog, _) = self.open(schemas)?;
        let conn = self.connection()?;
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
