//! SQL text shared by the loaders: quoting, DDL, and the `users` recompute.

use super::schema::{ColumnType, TableLoad};

/// A quoted identifier: `"order completed"` stays one name, `"` is doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// The SQL type of a column in an engine.
pub trait Dialect {
    fn type_name(&self, ty: ColumnType) -> &'static str;
    /// Whether tables get `PRIMARY KEY (id)` (PostgreSQL) or rely on the anti-join (DuckDB, whose
    /// `ALTER TABLE ADD COLUMN` refuses tables with indexes).
    fn primary_keys(&self) -> bool;
}

/// Statements that create `table` or add its new columns.
pub fn ddl(d: &dyn Dialect, schema: &str, table: &str, t: &TableLoad) -> Vec<String> {
    let name = qualified(schema, table);
    let mut out = Vec::new();
    if t.create {
        let mut cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| format!("{} {}", ident(c), d.type_name(*ty)))
            .collect();
        if d.primary_keys() && t.columns.iter().any(|(c, _)| c == "id") {
            cols.push("PRIMARY KEY (\"id\")".into());
        }
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {name} ({})",
            cols.join(", ")
        ));
        // `users` comes from a user's identifies: the loader asks whether the user has one as
        // new as the batch's (a probe of this index, however long the user's history: apps
        // often identify on every page load) and recomputes from them (its `user_id` prefix).
        if table == "identifies" && d.primary_keys() {
            out.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {name} (\"user_id\", \"timestamp\")",
                ident(&format!("{table}_user_id_timestamp_idx"))
            ));
        }
    }
    for (c, ty) in &t.add {
        out.push(format!(
            "ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {} {}",
            ident(c),
            d.type_name(*ty)
        ));
    }
    out
}

/// Rebuilds the `users` rows of the ids in `affected` (a relation with an `id` column: a table,
/// or a set-returning call with its alias) from `identifies`: per trait column, the latest
/// non-null value by `timestamp`.
pub fn recompute_users(schema: &str, users: &TableLoad, affected: &str, now: &str) -> Vec<String> {
    let users_t = qualified(schema, "users");
    let identifies = qualified(schema, "identifies");
    let traits: Vec<&String> = users
        .columns
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !matches!(c.as_str(), "id" | "received_at" | "uuid_ts"))
        .collect();
    let mut cols = vec![
        "\"id\"".to_owned(),
        "\"received_at\"".into(),
        "\"uuid_ts\"".into(),
    ];
    let mut values = vec![
        "a.id".to_owned(),
        "max(i.\"received_at\")".to_owned(),
        now.to_owned(),
    ];
    // One pass over the affected users' identifies (a join on the `user_id` index and one
    // group per user), each trait the first non-null value newest first: a subquery per user
    // and trait cost PostgreSQL more than the COPY of the whole load.
    for c in traits {
        let q = ident(c);
        cols.push(q.clone());
        values.push(format!(
            "(array_agg(i.{q} ORDER BY i.\"timestamp\" DESC NULLS LAST, i.\"received_at\" DESC NULLS LAST) \
             FILTER (WHERE i.{q} IS NOT NULL))[1]"
        ));
    }
    vec![
        format!("DELETE FROM {users_t} WHERE \"id\" IN (SELECT id FROM {affected})"),
        format!(
            "INSERT INTO {users_t} ({}) SELECT {} FROM (SELECT DISTINCT id FROM {affected}) a \
             LEFT JOIN {identifies} i ON i.\"user_id\" = a.id GROUP BY a.id",
            cols.join(", "),
            values.join(", ")
        ),
    ]
}

/// Upserts `users` rows given as one array parameter per column (`$1`, `$2`, ... in the
/// order of `users.columns`, without `uuid_ts`, which is the statement's time): a trait the
/// rows leave NULL keeps the value the table has (`users` module: the rows are newer than the
/// user's history), `received_at` is the later of the two.
pub fn upsert_users(d: &dyn Dialect, schema: &str, users: &TableLoad) -> String {
    let users_t = qualified(schema, "users");
    let mut cols = Vec::new();
    let mut values = Vec::new();
    let mut arrays = Vec::new();
    let mut aliases = Vec::new();
    let mut updates = Vec::new();
    for (c, ty) in &users.columns {
        let q = ident(c);
        cols.push(q.clone());
        if c == "uuid_ts" {
            values.push("now()".to_owned());
            updates.push(format!("{q} = EXCLUDED.{q}"));
            continue;
        }
        arrays.push(format!("${}::{}[]", arrays.len() + 1, d.type_name(*ty)));
        aliases.push(q.clone());
        values.push(format!("u.{q}"));
        match c.as_str() {
            "id" => {}
            "received_at" => updates.push(format!("{q} = GREATEST(t.{q}, EXCLUDED.{q})")),
            _ => updates.push(format!("{q} = COALESCE(EXCLUDED.{q}, t.{q})")),
        }
    }
    format!(
        "INSERT INTO {users_t} AS t ({}) SELECT {} FROM unnest({}) AS u({}) \
         ON CONFLICT (\"id\") DO UPDATE SET {}",
        cols.join(", "),
        values.join(", "),
        arrays.join(", "),
        aliases.join(", "),
        updates.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            qualified("web", "order completed"),
            "\"web\".\"order completed\""
        );
    }
}
