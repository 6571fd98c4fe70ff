//! PostgreSQL loader: per table, the rows whose `id` is not in the table yet go in with one
//! binary COPY (the primary key tells when some are: see `copy_new`), and the loaded log
//! offset is recorded — all in one transaction. `users` rows of the users the load touched are
//! upserted from the batch when the batch is newer than the user's history, and recomputed
//! from `identifies` otherwise (see the `users` module).

use std::collections::HashSet;
use std::error::Error;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Transaction};

use super::loader::{
    LoadStats, Loader, WarehouseError, catalog_type, discards_table, fresh_rows, row_ids,
};
use super::schema::{Catalog, Cell, ColumnType, SchemaLoad, TableLoad};
use super::sql::{self, Dialect, ident, qualified};
use super::users::BatchUsers;
use crate::ids::Offset;

pub struct Postgres;

impl Dialect for Postgres {
    fn type_name(&self, ty: ColumnType) -> &'static str {
        match ty {
            ColumnType::Bool => "boolean",
            ColumnType::Int => "bigint",
            ColumnType::Float => "double precision",
            ColumnType::Timestamp => "timestamptz",
            ColumnType::Text => "text",
        }
    }

    fn primary_keys(&self) -> bool {
        true
    }
}

/// A cell is written as itself: no boxed parameter or copied string per value. The mapper
/// only puts a cell in a column of its type (`schema::fit`).
impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::Bool(b) => b.to_sql(ty, out),
            Cell::Int(i) => i.to_sql(ty, out),
            Cell::Float(f) => f.to_sql(ty, out),
            Cell::Timestamp(t) => t.to_sql(ty, out),
            Cell::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::BOOL,
            Type::INT8,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
            Type::TEXT,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

pub struct PostgresLoader {
    url: String,
    warehouse: String,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
}

fn err(e: tokio_postgres::Error) -> WarehouseError {
    let class = e.code().map(|c| &c.code()[..2]);
    if e.is_closed() || e.as_db_error().is_none() {
        WarehouseError::Unavailable(e.to_string())
    } else if matches!(class, Some("22" | "54")) {
        // Data exceptions (a value the column cannot take) and program limits (a row over
        // 8 KB): about the rows, not the warehouse.
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        WarehouseError::Refused(detail)
    } else {
        WarehouseError::Load(e.to_string())
    }
}

impl PostgresLoader {
    pub fn new(url: &str, warehouse: &str) -> Result<PostgresLoader, WarehouseError> {
        // One worker drives the connection; the loader thread blocks on it per statement.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-postgres")
            .enable_all()
            .build()
            .map_err(|e| WarehouseError::Unavailable(format!("cannot start a runtime: {e}")))?;
        Ok(PostgresLoader {
            url: url.to_owned(),
            warehouse: warehouse.to_owned(),
            runtime,
            client: None,
        })
    }

    fn client(&mut self) -> Result<&mut Client, WarehouseError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let url = self.url.clone();
            let (client, connection) = self
                .runtime
                .block_on(tokio_postgres::connect(&url, NoTls))
                .map_err(|e| {
                    WarehouseError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
                })?;
            self.runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| WarehouseError::Unavailable("no connection".into()))
    }
}

/// Bytes of COPY data sent to the server at a time. `BinaryCopyInWriter` sends every 4 KiB (a
/// wake-up of the connection task each) and checks every value's type against its column
/// through `ToSql` (`schema::fit` already makes every cell its column's type): encoding here
/// instead costs the loading thread about half as much.
const COPY_CHUNK: usize = 256 * 1024;

/// Appends `row` to `buf` in PostgreSQL's binary COPY format; `false` (the row left incomplete)
/// when a cell is not of its column's type.
fn encode_row(buf: &mut BytesMut, row: &[Cell], types: &[ColumnType]) -> bool {
    // Columns per table are capped far below i16::MAX (PostgreSQL takes 1600).
    buf.put_i16(types.len() as i16);
    if row.len() != types.len() {
        return false;
    }
    for (cell, ty) in row.iter().zip(types) {
        match (cell, ty) {
            (Cell::Null, _) => buf.put_i32(-1),
            (Cell::Bool(b), ColumnType::Bool) => {
                buf.put_i32(1);
                buf.put_u8(u8::from(*b));
            }
            (Cell::Int(i), ColumnType::Int) => {
                buf.put_i32(8);
                buf.put_i64(*i);
            }
            (Cell::Float(f), ColumnType::Float) => {
                buf.put_i32(8);
                buf.put_f64(*f);
            }
            (Cell::Timestamp(t), ColumnType::Timestamp) => {
                buf.put_i32(8);
                let at = buf.len();
                if t.to_sql(&Type::TIMESTAMPTZ, buf).is_err() || buf.len() != at + 8 {
                    return false;
                }
            }
            (Cell::Text(s), ColumnType::Text) => {
                let Ok(n) = i32::try_from(s.len()) else {
                    return false;
                };
                buf.put_i32(n);
                buf.put_slice(s.as_bytes());
            }
            _ => return false,
        }
    }
    true
}

/// Binary COPY of `rows` into `target` (a table of `columns`); returns the rows copied.
pub async fn copy_rows<'r>(
    tx: &Transaction<'_>,
    target: &str,
    columns: &[(String, ColumnType)],
    rows: impl IntoIterator<Item = &'r Vec<Cell>>,
) -> Result<u64, tokio_postgres::Error> {
    let cols: Vec<String> = columns.iter().map(|(c, _)| ident(c)).collect();
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY {target} ({}) FROM STDIN (FORMAT binary)",
            cols.join(", ")
        ))
        .await?;
    let mut sink = std::pin::pin!(sink);
    let types: Vec<ColumnType> = columns.iter().map(|(_, t)| *t).collect();
    let mut buf = BytesMut::with_capacity(COPY_CHUNK * 2);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    for row in rows {
        if !encode_row(&mut buf, row, &types) {
            // A bug, not bad input. The incomplete row makes the server refuse the COPY
            // ("unexpected EOF"), so the load fails and is retried instead of writing a value
            // into a column of another type.
            tracing::error!(
                table = target,
                "a row's cells do not match the table's column types; the load is refused"
            );
            sink.as_mut().send(buf.split().freeze()).await?;
            return sink.finish().await;
        }
        if buf.len() >= COPY_CHUNK {
            sink.as_mut().send(buf.split().freeze()).await?;
        }
    }
    buf.put_i16(-1);
    sink.as_mut().send(buf.split().freeze()).await?;
    sink.finish().await
}

/// The rows of `t` not in `table` yet (`loader::fresh_rows`), found with one indexed lookup of
/// the batch's ids. Even for a table this load creates: `CREATE TABLE IF NOT EXISTS` may have
/// found one.
async fn new_rows<'t>(
    tx: &Transaction<'_>,
    table: &str,
    t: &'t TableLoad,
) -> Result<Vec<&'t Vec<Cell>>, tokio_postgres::Error> {
    let ids = row_ids(t);
    let present: HashSet<String> = if ids.is_empty() {
        HashSet::new()
    } else {
        tx.query(
            &format!("SELECT \"id\" FROM {table} WHERE \"id\" = ANY($1)"),
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    Ok(fresh_rows(t, &present))
}

/// Copies the rows of `t` not in `table` yet. A row already there is rare: the gateway drops
/// repeated messageIds within its window, and a load commits its log offset with its rows, so
/// no batch is loaded twice. So the batch (less its own repeats) is copied as it is, and only
/// when the primary key refuses it is the COPY undone, the batch's ids looked up and the rest
/// copied: the common case costs the server no lookup.
///
/// Returns the rows copied and whether the table already held some of the batch's ids.
async fn copy_new(
    tx: &Transaction<'_>,
    table: &str,
    t: &TableLoad,
) -> Result<(u64, bool), tokio_postgres::Error> {
    let batch = fresh_rows(t, &HashSet::new());
    tx.batch_execute("SAVEPOINT weir_copy").await?;
    match copy_rows(tx, table, &t.columns, batch).await {
        Ok(n) => {
            tx.batch_execute("RELEASE SAVEPOINT weir_copy").await?;
            Ok((n, false))
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT weir_copy").await?;
            let rows = new_rows(tx, table, t).await?;
            Ok((copy_rows(tx, table, &t.columns, rows).await?, true))
        }
        Err(e) => Err(e),
    }
}

/// Of the users of `batch`, the ones whose identifies in this batch are all newer (by
/// `timestamp`) than every one `identifies` holds for them yet: their `users` rows are the
/// upserted batch rows (`users` module). Asked before the batch's identifies are copied.
async fn users_newer_than_their_history(
    tx: &Transaction<'_>,
    identifies: &str,
    batch: &BatchUsers,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let (ids, firsts): (Vec<&str>, Vec<OffsetDateTime>) = batch
        .users
        .iter()
        .filter_map(|(id, first, _)| Some((id.as_str(), (*first)?)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // One probe per user of the index on `(user_id, timestamp)` (`sql::ddl`): no sort, and no
    // read of the user's older identifies however many there are.
    let rows = tx
        .query(
            &format!(
                "SELECT b.id FROM unnest($1::text[], $2::timestamptz[]) AS b(id, first_ts) \
                 WHERE NOT EXISTS (SELECT 1 FROM {identifies} i \
                   WHERE i.\"user_id\" = b.id AND i.\"timestamp\" >= b.first_ts)"
            ),
            &[&ids, &firsts],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Writes the `users` rows of this load: upserts the batch's rows of the users whose history
/// is older than the batch, and recomputes the others from `identifies`.
async fn load_users(
    tx: &Transaction<'_>,
    schema: &str,
    users: &TableLoad,
    all: &[String],
    batch: Option<(BatchUsers, HashSet<String>)>,
) -> Result<(), tokio_postgres::Error> {
    let mut recompute: Vec<&String> = all.iter().collect();
    if let Some((batch, newer)) = batch
        && !newer.is_empty()
    {
        recompute.retain(|u| !newer.contains(*u));
        // Column-major: one array per column, `uuid_ts` written by the statement.
        let written: Vec<usize> = (users.columns.iter().enumerate())
            .filter(|(_, (c, _))| c != "uuid_ts")
            .map(|(i, _)| i)
            .collect();
        let mut arrays: Vec<Vec<Cell>> = vec![Vec::with_capacity(newer.len()); written.len()];
        for (id, _, mut row) in batch.users {
            if newer.contains(&id) {
                for (array, at) in arrays.iter_mut().zip(&written) {
                    array.push(std::mem::replace(&mut row[*at], Cell::Null));
                }
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        tx.execute(&sql::upsert_users(&Postgres, schema, users), &params)
            .await?;
    }
    if !recompute.is_empty() {
        // The users as an array parameter: a temporary table would cost a catalog entry per load.
        let affected = "unnest($1::text[]) AS affected(id)";
        for stmt in sql::recompute_users(schema, users, affected, "now()") {
            tx.execute(&stmt, &[&recompute]).await?;
        }
    }
    Ok(())
}

async fn load_schema(
    tx: &Transaction<'_>,
    load: &SchemaLoad,
) -> Result<LoadStats, tokio_postgres::Error> {
    let mut stats = LoadStats::default();
    let schema = &load.schema;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
        .await?;
    let users = load.tables.get("users").filter(|_| !load.users.is_empty());
    let batch_users =
        users.and_then(|users| BatchUsers::of(load.tables.get("identifies")?, users, &load.users));
    let mut batch_users = batch_users.map(|b| (b, HashSet::new()));
    for (table, t) in &load.tables {
        for stmt in sql::ddl(&Postgres, schema, table, t) {
            tx.batch_execute(&stmt).await?;
        }
        if table == "users" || t.rows.is_empty() {
            continue;
        }
        let name = qualified(schema, table);
        if table == "identifies"
            && let Some((batch, newer)) = &mut batch_users
        {
            *newer = users_newer_than_their_history(tx, &name, batch).await?;
        }
        let (n, repeats) = copy_new(tx, &name, t).await?;
        if repeats
            && table == "identifies"
            && let Some((_, newer)) = &mut batch_users
        {
            // A repeated identify is already in the user's history: only the recompute knows
            // which of the two copies counts.
            newer.clear();
        }
        stats.rows += n;
        stats.tables.push((table.clone(), n));
    }
    if !load.discards.is_empty() {
        let d = discards_table(load);
        for stmt in sql::ddl(&Postgres, schema, "discards", &d) {
            tx.batch_execute(&stmt).await?;
        }
        stats.discards +=
            copy_rows(tx, &qualified(schema, "discards"), &d.columns, &d.rows).await?;
    }
    if let Some(users) = users {
        load_users(tx, schema, users, &load.users, batch_users).await?;
    }
    Ok(stats)
}

impl Loader for PostgresLoader {
    fn open(&mut self, schemas: &[String]) -> Result<(Catalog, Option<Offset>), WarehouseError> {
        let warehouse = self.warehouse.clone();
        let schemas = schemas.to_vec();
        let runtime = self.runtime.handle().clone();
        let client = self.client()?;
        runtime.block_on(async move {
            let tx = client.transaction().await.map_err(err)?;
            // Several routers (or tests) may create the bookkeeping table at once.
            tx.batch_execute(
                "SELECT pg_advisory_xact_lock(7243651); \
                 CREATE SCHEMA IF NOT EXISTS _weir; \
                 CREATE TABLE IF NOT EXISTS _weir.loads (warehouse text PRIMARY KEY, \
                   next_offset bigint NOT NULL, loaded_at timestamptz NOT NULL)",
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            let rows = client
                .query(
                    "SELECT table_schema, table_name, column_name, data_type \
                     FROM information_schema.columns WHERE table_schema = ANY($1) \
                     ORDER BY table_schema, table_name, ordinal_position",
                    &[&schemas],
                )
                .await
                .map_err(err)?;
            let mut catalog = Catalog::default();
            for r in rows {
                let (s, t, c, ty): (String, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                catalog
                    .schemas
                    .entry(s)
                    .or_default()
                    .entry(t)
                    .or_default()
                    .insert(c, catalog_type(&ty));
            }
            let offset = client
                .query_opt(
                    "SELECT next_offset FROM _weir.loads WHERE warehouse = $1",
                    &[&warehouse],
                )
                .await
                .map_err(err)?
                .map(|r| Offset(r.get::<_, i64>(0) as u64));
            Ok((catalog, offset))
        })
    }

    fn load(&mut self, loads: &[SchemaLoad], next: Offset) -> Result<LoadStats, WarehouseError> {
        let warehouse = self.warehouse.clone();
        let runtime = self.runtime.handle().clone();
        let client = self.client()?;
        let result = runtime.block_on(async move {
            let tx = client.transaction().await?;
            let mut stats = LoadStats::default();
            for load in loads {
                let s = load_schema(&tx, load).await?;
                stats.merge(s);
            }
            tx.execute(
                "INSERT INTO _weir.loads (warehouse, next_offset, loaded_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (warehouse) DO UPDATE SET next_offset = EXCLUDED.next_offset, loaded_at = EXCLUDED.loaded_at",
                &[&warehouse, &(next.0 as i64)],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(stats)
        });
        result.map_err(|e| {
            let e = err(e);
            if matches!(e, WarehouseError::Unavailable(_)) {
                self.client = None;
            }
            e
        })
    }

    fn status(
        &mut self,
        schemas: &[String],
    ) -> Result<Vec<super::loader::TableStatus>, WarehouseError> {
        let (catalog, _) = self.open(schemas)?;
        let runtime = self.runtime.handle().clone();
        let client = self.client()?;
        runtime.block_on(async move {
            let mut out = Vec::new();
            for (schema, tables) in &catalog.schemas {
                for table in tables.keys() {
                    let has_uuid_ts = tables[table].contains_key("uuid_ts");
                    let q = format!(
                        "SELECT count(*), {} FROM {}",
                        if has_uuid_ts {
                            "max(\"uuid_ts\")"
                        } else {
                            "NULL::timestamptz"
                        },
                        qualified(schema, table)
                    );
                    let r = client.query_one(&q, &[]).await.map_err(err)?;
                    out.push(super::loader::TableStatus {
                        schema: schema.clone(),
                        table: table.clone(),
                        rows: r.get::<_, i64>(0) as u64,
                        last_load: r.get::<_, Option<time::OffsetDateTime>>(1),
                    });
                }
            }
            out.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_encode_as_postgres_binary_copy() {
        let mut buf = BytesMut::new();
        let row = vec![
            Cell::Text("é".into()),
            Cell::Null,
            Cell::Int(-2),
            Cell::Bool(true),
        ];
        let types = [
            ColumnType::Text,
            ColumnType::Float,
            ColumnType::Int,
            ColumnType::Bool,
        ];
        assert!(encode_row(&mut buf, &row, &types));
        let mut want = vec![0, 4];
        want.extend([0, 0, 0, 2, 0xc3, 0xa9]);
        want.extend((-1i32).to_be_bytes());
        want.extend(8i32.to_be_bytes());
        want.extend((-2i64).to_be_bytes());
        want.extend([0, 0, 0, 1, 1]);
        assert_eq!(&buf[..], &want[..]);
    }

    #[test]
    fn a_cell_of_another_type_than_its_column_is_refused() {
        let mut buf = BytesMut::new();
        assert!(!encode_row(&mut buf, &[Cell::Int(1)], &[ColumnType::Text]));
        assert!(!encode_row(&mut buf, &[], &[ColumnType::Text]));
    }
}
