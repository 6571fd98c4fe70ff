//! The loader trait every warehouse engine implements.
//!
//! A load is one transaction: the rows of every table (deduplicated on `id`), the discards,
//! the recomputed `users` rows, and the log offset the load reaches, in `_weir.loads`. A crash
//! at any point leaves either all of it or none of it, so after a restart the loader resumes at
//! the recorded offset and no row is lost or loaded twice.

use std::collections::HashSet;

use time::OffsetDateTime;

use super::schema::{Catalog, Cell, ColumnType, SchemaLoad, TableLoad, reserved_columns};
use crate::ids::Offset;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WarehouseError {
    /// The warehouse cannot be reached (down, refused, file locked by another process): wait
    /// and retry; the events stay in the log.
    #[error("the warehouse is unavailable: {0}")]
    Unavailable(String),
    /// The warehouse refused the load.
    #[error("the load failed: {0}")]
    Load(String),
    /// The warehouse refused the load for a value in it (one it cannot store, a row over its
    /// size limit): retrying the same rows fails the same way, so the loader finds the events
    /// at fault by loading the batch in parts (`WarehouseLoader::isolate`).
    #[error("the warehouse refused a value: {0}")]
    Refused(String),
}

/// What a load wrote.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    /// Rows inserted (duplicates of rows already there are not counted).
    pub rows: u64,
    pub discards: u64,
    pub tables: Vec<(String, u64)>,
}

impl LoadStats {
    pub fn merge(&mut self, other: LoadStats) {
        self.rows += other.rows;
        self.discards += other.discards;
        self.tables.extend(other.tables);
    }
}

/// One table as `weir warehouse status` shows it.
#[derive(Debug, Clone)]
pub struct TableStatus {
    pub schema: String,
    pub table: String,
    pub rows: u64,
    pub last_load: Option<OffsetDateTime>,
}

/// A warehouse engine.
pub trait Loader: Send {
    /// Connects, creates the bookkeeping table, and returns the columns of `schemas` and the
    /// offset the last committed load reached.
    fn open(&mut self, schemas: &[String]) -> Result<(Catalog, Option<Offset>), WarehouseError>;

    /// Writes `loads` and records `next` as the next offset to load, atomically.
    fn load(&mut self, loads: &[SchemaLoad], next: Offset) -> Result<LoadStats, WarehouseError>;

    /// Rows and last load time of every table of `schemas`.
    fn status(&mut self, schemas: &[String]) -> Result<Vec<TableStatus>, WarehouseError>;

    /// Nothing is ready to load: a moment to let go of what only the next load needs (DuckDB
    /// closes its file so other processes can open it).
    fn idle(&mut self) {}
}

/// The engine-neutral type of a column from `information_schema.columns.data_type`.
pub fn catalog_type(data_type: &str) -> ColumnType {
    match data_type.to_ascii_lowercase().as_str() {
        "boolean" => ColumnType::Bool,
        "bigint" | "integer" | "smallint" => ColumnType::Int,
        "double precision" | "double" | "real" | "float" => ColumnType::Float,
        t if t.starts_with("timestamp") => ColumnType::Timestamp,
        _ => ColumnType::Text,
    }
}

/// The discards of `load` as rows of the `discards` table.
pub fn discards_table(load: &SchemaLoad) -> TableLoad {
    let columns: Vec<(String, ColumnType)> = reserved_columns("discards", false)
        .into_iter()
        .map(|(c, t)| (c.to_owned(), t))
        .collect();
    let now = crate::timestamp::now();
    let rows = load
        .discards
        .iter()
        .map(|d| {
            vec![
                Cell::Text(d.table.clone()),
                Cell::Text(d.column.clone()),
                Cell::Text(d.value.clone()),
                Cell::Text(d.reason.clone()),
                Cell::Text(d.row_id.clone()),
                d.received_at.map_or(Cell::Null, Cell::Timestamp),
                Cell::Timestamp(now),
            ]
        })
        .collect();
    let mut table = TableLoad::new(columns, true);
    table.rows = rows;
    table
}

/// The `id` of every row of `t` that has one (as text), in row order.
pub fn row_ids(t: &TableLoad) -> Vec<&str> {
    ids_of(t, &t.rows)
}

/// The ids of `rows`, rows of `t`.
pub fn ids_of<'r>(t: &TableLoad, rows: impl IntoIterator<Item = &'r Vec<Cell>>) -> Vec<&'r str> {
    let Some(at) = t.column_index("id") else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| text_at(row, at))
        .collect()
}

/// The rows of `t` whose `id` is neither in `present` (already in the table) nor earlier in
/// the batch: what `INSERT ... ON CONFLICT ("id") DO NOTHING` would insert. Rows without an
/// id are kept, for the engine to accept or refuse.
pub fn fresh_rows<'t>(t: &'t TableLoad, present: &HashSet<String>) -> Vec<&'t Vec<Cell>> {
    let Some(at) = t.column_index("id") else {
        return t.rows.iter().collect();
    };
    let mut seen: HashSet<&str> = HashSet::with_capacity(t.rows.len());
    t.rows
        .iter()
        .filter(|row| match text_at(row, at) {
            Some(id) => !present.contains(id) && seen.insert(id),
            None => true,
        })
        .collect()
}

fn text_at(row: &[Cell], at: usize) -> Option<&str> {
    match row.get(at) {
        Some(Cell::Text(s)) => Some(s.as_str()),
        _ => None,
    }
}
