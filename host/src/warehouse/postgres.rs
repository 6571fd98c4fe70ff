//! PostgreSQL loader: per table, the rows whose `id` is not in the table yet go in with one
//! binary COPY (the primary key tells when some are: see `copy_new`), and the loaded log
//! offset is recorded — all in one transaction. `users` is recomputed from
//! `identifies` for the users the load touched.

use std::collections::HashSet;
use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Transaction};

use super::loader::{
    LoadStats, Loader, WarehouseError, catalog_type, discards_table, fresh_rows, row_ids,
};
use super::schema::{Catalog, Cell, ColumnType, SchemaLoad};
use super::sql::{self, Dialect, ident, qualified};
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

fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Bool => Type::BOOL,
        ColumnType::Int => Type::INT8,
        ColumnType::Float => Type::FLOAT8,
        ColumnType::Timestamp => Type::TIMESTAMPTZ,
        ColumnType::Text => Type::TEXT,
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
    if e.is_closed() || e.as_db_error().is_none() {
        WarehouseError::Unavailable(e.to_string())
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

/// Binary COPY of `rows` into `target` (a table or a staging table); returns the rows copied.
async fn copy_rows<'r>(
    tx: &Transaction<'_>,
    target: &str,
    columns: &[(String, ColumnType)],
    rows: impl IntoIterator<Item = &'r Vec<Cell>>,
) -> Result<u64, tokio_postgres::Error> {
    let cols: Vec<String> = columns.iter().map(|(c, _)| ident(c)).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {target} ({}) FROM STDIN (FORMAT binary)",
            cols.join(", ")
        ))
        .await?;
    let types: Vec<Type> = columns.iter().map(|(_, t)| pg_type(*t)).collect();
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    for row in rows {
        writer.as_mut().write_raw(row.iter()).await?;
    }
    writer.finish().await
}

/// The rows of `t` not in `table` yet (`loader::fresh_rows`), found with one indexed lookup of
/// the batch's ids. Even for a table this load creates: `CREATE TABLE IF NOT EXISTS` may have
/// found one.
async fn new_rows<'t>(
    tx: &Transaction<'_>,
    table: &str,
    t: &'t super::schema::TableLoad,
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
async fn copy_new(
    tx: &Transaction<'_>,
    table: &str,
    t: &super::schema::TableLoad,
) -> Result<u64, tokio_postgres::Error> {
    let batch = fresh_rows(t, &HashSet::new());
    tx.batch_execute("SAVEPOINT weir_copy").await?;
    match copy_rows(tx, table, &t.columns, batch).await {
        Ok(n) => {
            tx.batch_execute("RELEASE SAVEPOINT weir_copy").await?;
            Ok(n)
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT weir_copy").await?;
            let rows = new_rows(tx, table, t).await?;
            copy_rows(tx, table, &t.columns, rows).await
        }
        Err(e) => Err(e),
    }
}

async fn load_schema(
    tx: &Transaction<'_>,
    load: &SchemaLoad,
) -> Result<LoadStats, tokio_postgres::Error> {
    let mut stats = LoadStats::default();
    let schema = &load.schema;
    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
        .await?;
    for (table, t) in &load.tables {
        for stmt in sql::ddl(&Postgres, schema, table, t) {
            tx.batch_execute(&stmt).await?;
        }
        if table == "users" || t.rows.is_empty() {
            continue;
        }
        let n = copy_new(tx, &qualified(schema, table), t).await?;
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
    if let Some(users) = load.tables.get("users")
        && !load.users.is_empty()
    {
        // The users as an array parameter: a temporary table would cost a catalog entry per load.
        let affected = "unnest($1::text[]) AS affected(id)";
        for stmt in sql::recompute_users(schema, users, affected, "now()") {
            tx.execute(&stmt, &[&load.users]).await?;
        }
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
