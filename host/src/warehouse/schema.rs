//! Mapping events onto the Segment / RudderStack warehouse layout.
//!
//! - One database schema per source (the source name, snake_case).
//! - Tables: `tracks` (one row per track), one table per track event name (snake_case),
//!   `identifies`, `users` (latest traits per user), `pages`, `screens`, `groups`, `aliases`,
//!   and `discards` (values that did not fit).
//! - Columns: the reserved `id`, `anonymous_id`, `user_id`, `received_at`, `sent_at`,
//!   `timestamp`, `original_timestamp`, `uuid_ts` (+ `event`, `event_text` for tracks, `name`
//!   for pages and screens, `group_id`, `previous_id`); `context` flattened with a `context_`
//!   prefix (`context.page.path` → `context_page_path`); `properties` (track event tables,
//!   pages, screens) and `traits` (identifies, groups) flattened without prefix.
//! - Names: snake_case; a property or trait colliding with a reserved column gets the prefix
//!   `property_` / `trait_`; an event whose table name collides with a fixed table gets the
//!   prefix `event_`; names longer than the engine's limit are cut and get `_` + 8 hex digits
//!   of their hash.
//! - Types are inferred from the first value (bool, bigint, double, timestamp for ISO-8601
//!   strings, text; arrays and objects as JSON text) and never change: a later value that does
//!   not fit goes to `discards` with its reason, and its row lands with that column NULL.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::json::{Json, Object};
use time::OffsetDateTime;

use crate::timestamp;

/// A column type, as the warehouse stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Bool,
    Int,
    Float,
    Timestamp,
    Text,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Bool => "boolean",
            ColumnType::Int => "bigint",
            ColumnType::Float => "double",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Text => "text",
        }
    }
}

/// A value ready for the warehouse.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Timestamp(OffsetDateTime),
    Text(String),
}

/// The type a first value gives a new column.
fn infer(v: &Json) -> Option<ColumnType> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(_) => ColumnType::Bool,
        Json::Number(n) if n.is_i64() => ColumnType::Int,
        Json::Number(_) => ColumnType::Float,
        Json::String(s) if looks_like_timestamp(s) => ColumnType::Timestamp,
        Json::String(_) | Json::Array(_) | Json::Object(_) => ColumnType::Text,
    })
}

/// ISO-8601 date-times only; a bare number or date string stays text.
fn looks_like_timestamp(s: &str) -> bool {
    s.len() >= 19
        && s.as_bytes()
            .get(10)
            .is_some_and(|b| *b == b'T' || *b == b' ')
        && timestamp::parse(s).is_some()
}

/// `v` as a `ty` cell, or why it does not fit (with the value back, for the discard).
fn fit(v: Json<'_>, ty: ColumnType) -> Result<Cell, (String, Json<'_>)> {
    match (ty, v) {
        // Text (most cells) and JSON-as-text are made once, from the value itself.
        (ColumnType::Text, v @ (Json::String(_) | Json::Array(_) | Json::Object(_))) => {
            Ok(Cell::Text(v.into_text()))
        }
        (ty, v) => fit_ref(&v, ty).map_err(|reason| (reason, v)),
    }
}

fn fit_ref(v: &Json, ty: ColumnType) -> Result<Cell, String> {
    match (ty, v) {
        (_, Json::Null) => Ok(Cell::Null),
        (ColumnType::Bool, Json::Bool(b)) => Ok(Cell::Bool(*b)),
        (ColumnType::Int, Json::Number(n)) if n.is_i64() => {
            Ok(Cell::Int(n.as_i64().unwrap_or_default()))
        }
        (ColumnType::Float, Json::Number(n)) => n
            .as_f64()
            .map(Cell::Float)
            .ok_or_else(|| "not a finite number".to_string()),
        (ColumnType::Timestamp, Json::String(s)) => timestamp::parse(s)
            .map(Cell::Timestamp)
            .ok_or_else(|| format!("`{s}` is not an ISO-8601 date-time")),
        (ColumnType::Text, other) => Ok(Cell::Text(other.clone().into_text())),
        (ty, other) => Err(format!(
            "a {} does not fit the column's type {}",
            kind_of(other),
            ty.name()
        )),
    }
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(n) if n.is_i64() => "integer",
        Json::Number(_) => "decimal number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// snake_case for table and column names: `Order Completed` → `order_completed`,
/// `orderId` → `order_id`, `2FA` → `_2fa`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Cuts `name` to `limit` bytes, keeping it unique with a hash suffix.
pub fn fit_identifier(name: &str, limit: usize) -> String {
    if name.len() <= limit {
        return name.to_owned();
    }
    let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    let keep = limit.saturating_sub(9);
    let mut cut = keep;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &name[..cut], hash as u32)
}

/// The fixed tables of a source schema.
pub const FIXED_TABLES: &[&str] = &[
    "tracks",
    "identifies",
    "users",
    "pages",
    "screens",
    "groups",
    "aliases",
    "discards",
];

const COMMON: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Text),
    ("anonymous_id", ColumnType::Text),
    ("user_id", ColumnType::Text),
    ("received_at", ColumnType::Timestamp),
    ("sent_at", ColumnType::Timestamp),
    ("timestamp", ColumnType::Timestamp),
    ("original_timestamp", ColumnType::Timestamp),
    ("uuid_ts", ColumnType::Timestamp),
];

const USERS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::Text),
    ("received_at", ColumnType::Timestamp),
    ("uuid_ts", ColumnType::Timestamp),
];

const DISCARDS: &[(&str, ColumnType)] = &[
    ("table_name", ColumnType::Text),
    ("column_name", ColumnType::Text),
    ("column_value", ColumnType::Text),
    ("reason", ColumnType::Text),
    ("row_id", ColumnType::Text),
    ("received_at", ColumnType::Timestamp),
    ("uuid_ts", ColumnType::Timestamp),
];

const EVENT: &[(&str, ColumnType)] = &[
    ("event", ColumnType::Text),
    ("event_text", ColumnType::Text),
];

/// The fixed columns of a table, in two parts: the ones every table of its kind has, then
/// the table's own.
fn reserved_parts(table: &str, is_event_table: bool) -> [&'static [(&'static str, ColumnType)]; 2] {
    let base = match table {
        "users" => USERS,
        "discards" => DISCARDS,
        _ => COMMON,
    };
    let own: &[(&str, ColumnType)] = match table {
        "tracks" => EVENT,
        "pages" | "screens" => &[("name", ColumnType::Text)],
        "groups" => &[("group_id", ColumnType::Text)],
        "aliases" => &[("previous_id", ColumnType::Text)],
        _ if is_event_table => EVENT,
        _ => &[],
    };
    [base, own]
}

/// The fixed columns of a table (before context, properties and traits).
pub fn reserved_columns(table: &str, is_event_table: bool) -> Vec<(&'static str, ColumnType)> {
    reserved_parts(table, is_event_table).concat()
}

/// Whether `column` is one of [`reserved_columns`] of `table`, without building the list
/// (the mapper asks for every property and trait).
fn is_reserved(table: &str, is_event_table: bool, column: &str) -> bool {
    reserved_parts(table, is_event_table)
        .iter()
        .any(|part| part.iter().any(|(c, _)| *c == column))
}

/// What the warehouse holds: per schema, per table, its columns and their types.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub schemas: HashMap<String, HashMap<String, BTreeMap<String, ColumnType>>>,
}

/// Limits of the mapping.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_tables: usize,
    pub max_columns: usize,
    /// Longest identifier the engine takes (PostgreSQL: 63 bytes).
    pub identifier_limit: usize,
}

/// Rows bound for one table.
#[derive(Clone, Debug, Default)]
pub struct TableLoad {
    /// Every column of the table after this load, in order (existing ones first).
    pub columns: Vec<(String, ColumnType)>,
    /// Whether the table is created by this load.
    pub create: bool,
    /// Columns this load adds to an existing table.
    pub add: Vec<(String, ColumnType)>,
    /// Rows, each with one cell per column in `columns`.
    pub rows: Vec<Vec<Cell>>,
    /// `columns` by name, for the mapper's lookups (rebuilt if `columns` changed without it).
    positions: HashMap<String, usize, foldhash::fast::FixedState>,
}

impl TableLoad {
    pub fn new(columns: Vec<(String, ColumnType)>, create: bool) -> TableLoad {
        TableLoad {
            columns,
            create,
            ..TableLoad::default()
        }
    }

    /// The position of column `name`, by a scan of `columns` (for the loaders, a few lookups
    /// per table; the mapper's per-value lookups use `position`).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| c == name)
    }

    /// The position of column `name`.
    fn position(&mut self, name: &str) -> Option<usize> {
        if self.positions.len() != self.columns.len() {
            self.positions = (self.columns.iter().enumerate())
                .map(|(i, (c, _))| (c.clone(), i))
                .collect();
        }
        self.positions.get(name).copied()
    }

    /// Adds a column, to the table or (for a table that exists) to what the load adds.
    fn push_column(&mut self, name: String, ty: ColumnType) {
        if !self.create {
            self.add.push((name.clone(), ty));
        }
        if self.positions.len() == self.columns.len() {
            self.positions.insert(name.clone(), self.columns.len());
        }
        self.columns.push((name, ty));
    }
}

/// A value that did not fit.
#[derive(Clone, Debug, PartialEq)]
pub struct Discard {
    pub table: String,
    pub column: String,
    pub value: String,
    pub reason: String,
    pub row_id: String,
    pub received_at: Option<OffsetDateTime>,
}

/// Everything one load writes into one source schema.
#[derive(Clone, Debug, Default)]
pub struct SchemaLoad {
    pub schema: String,
    pub tables: BTreeMap<String, TableLoad>,
    pub discards: Vec<Discard>,
    /// Users whose `users` row must be recomputed from `identifies`.
    pub users: Vec<String>,
}

/// An event flattened into columns, before types are checked.
struct Row<'a> {
    table: String,
    values: Vec<(String, Json<'a>)>,
    id: String,
    received_at: Option<OffsetDateTime>,
}

fn flatten_into<'a>(prefix: &str, v: Object<'a>, out: &mut Vec<(String, Json<'a>)>) {
    for (k, v) in v {
        let key = snake_case(&k);
        if key.is_empty() {
            continue;
        }
        let name = if prefix.is_empty() {
            key
        } else {
            let mut name = String::with_capacity(prefix.len() + 1 + key.len());
            name.push_str(prefix);
            name.push('_');
            name.push_str(&key);
            name
        };
        match v {
            Json::Object(inner) if !inner.is_empty() => flatten_into(&name, inner, out),
            Json::Null => {}
            other => out.push((name, other)),
        }
    }
}

/// A string field's value (a number as its text), or `None` for anything else.
fn as_text(v: Json<'_>) -> Option<Json<'_>> {
    match v {
        Json::String(_) => Some(v),
        Json::Number(n) => Some(Json::string(n.to_string())),
        _ => None,
    }
}

fn as_object(v: Json<'_>) -> Object<'_> {
    match v {
        Json::Object(o) => o,
        _ => Object::new(),
    }
}

/// The top-level fields of an event the mapper reads, moved out of it in one pass (instead of
/// a hashed lookup per field).
#[derive(Default)]
struct Fields<'a> {
    kind: String,
    message_id: Option<Json<'a>>,
    anonymous_id: Option<Json<'a>>,
    user_id: Option<Json<'a>>,
    /// `receivedAt`, `sentAt`, `timestamp`, `originalTimestamp`.
    times: [Option<Json<'a>>; 4],
    context: Object<'a>,
    properties: Object<'a>,
    traits: Object<'a>,
    event: Option<Json<'a>>,
    name: Option<Json<'a>>,
    group_id: Option<Json<'a>>,
    previous_id: Option<Json<'a>>,
}

/// Where each time field goes, in `Fields::times` order.
const TIME_COLUMNS: [&str; 4] = ["received_at", "sent_at", "timestamp", "original_timestamp"];

impl<'a> Fields<'a> {
    fn of(event: Object<'a>) -> Fields<'a> {
        let mut f = Fields::default();
        for (k, v) in event {
            match k.as_ref() {
                "type" => {
                    if let Json::String(t) = v {
                        f.kind = t.into_owned();
                    }
                }
                "messageId" => f.message_id = as_text(v),
                "anonymousId" => f.anonymous_id = as_text(v),
                "userId" => f.user_id = as_text(v),
                "receivedAt" => f.times[0] = Some(v),
                "sentAt" => f.times[1] = Some(v),
                "timestamp" => f.times[2] = Some(v),
                "originalTimestamp" => f.times[3] = Some(v),
                "context" => f.context = as_object(v),
                "properties" => f.properties = as_object(v),
                "traits" => f.traits = as_object(v),
                "event" => f.event = as_text(v),
                "name" => f.name = as_text(v),
                "groupId" => f.group_id = as_text(v),
                "previousId" => f.previous_id = as_text(v),
                _ => {}
            }
        }
        f
    }
}

/// Maps events onto tables and checks every value against the catalog, which it updates with
/// the tables and columns this load creates.
pub struct Mapper<'a> {
    catalog: &'a mut Catalog,
    caps: Caps,
    /// `uuid_ts` of every row: when this batch was mapped.
    uuid_ts: String,
    /// Per schema, the users already in its load's `users` list.
    identified: HashMap<String, HashSet<String>>,
}

impl<'a> Mapper<'a> {
    pub fn new(catalog: &'a mut Catalog, caps: Caps, loaded_at: OffsetDateTime) -> Mapper<'a> {
        Mapper {
            catalog,
            caps,
            uuid_ts: timestamp::format(loaded_at),
            identified: HashMap::new(),
        }
    }

    fn table_name(&self, event: &str) -> String {
        let mut name = snake_case(event);
        if name.is_empty() {
            name = "unnamed_event".into();
        }
        if FIXED_TABLES.contains(&name.as_str()) || name.starts_with("_weir") {
            name = format!("event_{name}");
        }
        fit_identifier(&name, self.caps.identifier_limit)
    }

    /// The rows of an event, its values moved out of it.
    fn rows_of<'e>(&self, f: Fields<'e>) -> Vec<Row<'e>> {
        let id = match f.message_id {
            Some(Json::String(s)) => s.into_owned(),
            _ => String::new(),
        };
        let received_at = f.times[0]
            .as_ref()
            .and_then(Json::as_str)
            .and_then(timestamp::parse);
        let mut common: Vec<(String, Json<'e>)> = Vec::with_capacity(64);
        common.push(("id".into(), Json::string(id.clone())));
        for (col, v) in [("anonymous_id", f.anonymous_id), ("user_id", f.user_id)] {
            if let Some(v) = v {
                common.push((col.into(), v));
            }
        }
        for (col, v) in TIME_COLUMNS.into_iter().zip(f.times) {
            if let Some(v) = v.filter(|v| !v.is_null()) {
                common.push((col.into(), v));
            }
        }
        common.push(("uuid_ts".into(), Json::string(self.uuid_ts.clone())));
        flatten_into("context", f.context, &mut common);
        let custom = |fields: Object<'e>, prefix: &str, table: &str, is_event: bool| {
            let mut flat = Vec::with_capacity(fields.len());
            flatten_into("", fields, &mut flat);
            for (k, _) in &mut flat {
                if is_reserved(table, is_event, k) || k.starts_with("context_") {
                    *k = format!("{prefix}_{k}");
                }
            }
            flat
        };
        let row = |table: &str, mut values: Vec<(String, Json<'e>)>, extra| {
            values.extend(extra);
            Row {
                table: table.to_owned(),
                values,
                id: id.clone(),
                received_at,
            }
        };
        match f.kind.as_str() {
            "track" => {
                let event_text = match f.event {
                    Some(Json::String(s)) => s,
                    _ => Default::default(),
                };
                let table = self.table_name(&event_text);
                let named = vec![
                    ("event".to_owned(), Json::string(table.clone())),
                    ("event_text".to_owned(), Json::String(event_text)),
                ];
                let mut event_row = named.clone();
                event_row.extend(custom(f.properties, "property", &table, true));
                // The event's table gets the common values moved; `tracks` a copy.
                vec![
                    row("tracks", common.clone(), named),
                    row(&table, common, event_row),
                ]
            }
            kind @ ("page" | "screen") => {
                let table = if kind == "page" { "pages" } else { "screens" };
                let mut extra = Vec::new();
                if let Some(n) = f.name {
                    extra.push(("name".to_owned(), n));
                }
                extra.extend(custom(f.properties, "property", table, false));
                vec![row(table, common, extra)]
            }
            "identify" => {
                let traits = custom(f.traits, "trait", "identifies", false);
                vec![row("identifies", common, traits)]
            }
            "group" => {
                let mut extra = Vec::new();
                if let Some(g) = f.group_id {
                    extra.push(("group_id".to_owned(), g));
                }
                extra.extend(custom(f.traits, "trait", "groups", false));
                vec![row("groups", common, extra)]
            }
            "alias" => {
                let mut extra = Vec::new();
                if let Some(p) = f.previous_id {
                    extra.push(("previous_id".to_owned(), p));
                }
                vec![row("aliases", common, extra)]
            }
            _ => Vec::new(),
        }
    }

    /// Maps one event of the source into `load`.
    pub fn add(&mut self, load: &mut SchemaLoad, event: Object<'_>) {
        let f = Fields::of(event);
        let identified = match (&f.kind[..], &f.user_id) {
            ("identify", Some(Json::String(user))) => Some(user.clone().into_owned()),
            _ => None,
        };
        for row in self.rows_of(f) {
            self.place(load, row);
        }
        if let Some(user) = identified {
            let seen = self.identified.entry(load.schema.clone()).or_default();
            if !seen.contains(&user) {
                seen.insert(user.clone());
                load.users.push(user);
            }
        }
    }

    fn place(&mut self, load: &mut SchemaLoad, row: Row<'_>) {
        let limit = self.caps.identifier_limit;
        if !self.catalog.schemas.contains_key(&load.schema) {
            self.catalog
                .schemas
                .insert(load.schema.clone(), HashMap::new());
        }
        let Some(schema) = self.catalog.schemas.get_mut(&load.schema) else {
            return;
        };
        let is_event_table = !FIXED_TABLES.contains(&row.table.as_str());
        if !schema.contains_key(&row.table) && !load.tables.contains_key(&row.table) {
            let tables = schema.len();
            if tables >= self.caps.max_tables {
                load.discards.push(Discard {
                    table: row.table.clone(),
                    column: String::new(),
                    value: String::new(),
                    reason: format!(
                        "the schema has reached its cap of {} tables; the row was not loaded",
                        self.caps.max_tables
                    ),
                    row_id: row.id.clone(),
                    received_at: row.received_at,
                });
                return;
            }
        }
        let table =
            load.tables
                .entry(row.table.clone())
                .or_insert_with(|| match schema.get(&row.table) {
                    Some(existing) => TableLoad::new(
                        existing.iter().map(|(c, t)| (c.clone(), *t)).collect(),
                        false,
                    ),
                    None => TableLoad::new(
                        reserved_columns(&row.table, is_event_table)
                            .into_iter()
                            .map(|(c, t)| (c.to_owned(), t))
                            .collect(),
                        true,
                    ),
                });
        let mut cells: Vec<Cell> = vec![Cell::Null; table.columns.len()];
        for (name, value) in row.values {
            let name = if name.len() <= limit {
                name
            } else {
                fit_identifier(&name, limit)
            };
            let (index, ty) = match table.position(&name) {
                Some(i) => (i, table.columns[i].1),
                None => {
                    let Some(ty) = infer(&value) else { continue };
                    if table.columns.len() >= self.caps.max_columns {
                        load.discards.push(Discard {
                            table: row.table.clone(),
                            column: name,
                            value: value.into_text(),
                            reason: format!(
                                "the table has reached its cap of {} columns",
                                self.caps.max_columns
                            ),
                            row_id: row.id.clone(),
                            received_at: row.received_at,
                        });
                        continue;
                    }
                    table.push_column(name.clone(), ty);
                    for r in &mut table.rows {
                        r.push(Cell::Null);
                    }
                    cells.push(Cell::Null);
                    (table.columns.len() - 1, ty)
                }
            };
            match fit(value, ty) {
                Ok(cell) => cells[index] = cell,
                Err((reason, value)) => load.discards.push(Discard {
                    table: row.table.clone(),
                    column: name,
                    value: value.into_text(),
                    reason,
                    row_id: row.id.clone(),
                    received_at: row.received_at,
                }),
            }
        }
        table.rows.push(cells);
        // The catalog now knows the table as this load will leave it. It holds the columns the
        // table load started with, so it only lacks the ones added since.
        let known = schema.entry(row.table).or_default();
        if known.len() < table.columns.len() {
            for (c, t) in &table.columns {
                known.entry(c.clone()).or_insert(*t);
            }
        }
    }

    /// Gives `users` every trait column `identifies` has, so the recompute can fill them.
    pub fn prepare_users(&mut self, load: &mut SchemaLoad) {
        if load.users.is_empty() {
            return;
        }
        let schema = self.catalog.schemas.entry(load.schema.clone()).or_default();
        let identifies = schema.get("identifies").cloned().unwrap_or_default();
        let reserved: HashSet<&str> = COMMON.iter().map(|(c, _)| *c).collect();
        let traits: Vec<(String, ColumnType)> = identifies
            .iter()
            .filter(|(c, _)| !reserved.contains(c.as_str()) && !c.starts_with("context_"))
            .map(|(c, t)| (c.clone(), *t))
            .collect();
        let existing = schema.get("users").cloned();
        let mut table = match &existing {
            Some(cols) => {
                TableLoad::new(cols.iter().map(|(c, t)| (c.clone(), *t)).collect(), false)
            }
            None => TableLoad::new(
                reserved_columns("users", false)
                    .into_iter()
                    .map(|(c, t)| (c.to_owned(), t))
                    .collect(),
                true,
            ),
        };
        for (c, t) in traits {
            if table.position(&c).is_none() && table.columns.len() < self.caps.max_columns {
                table.push_column(c, t);
            }
        }
        let known = schema.entry("users".into()).or_default();
        for (c, t) in &table.columns {
            known.entry(c.clone()).or_insert(*t);
        }
        load.tables.insert("users".into(), table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn caps() -> Caps {
        Caps {
            max_tables: 100,
            max_columns: 100,
            identifier_limit: 63,
        }
    }

    fn map(events: &[Value]) -> (SchemaLoad, Catalog) {
        let mut catalog = Catalog::default();
        let mut load = SchemaLoad {
            schema: "web".into(),
            ..SchemaLoad::default()
        };
        let mut m = Mapper::new(&mut catalog, caps(), timestamp::now());
        let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
        for p in &payloads {
            m.add(&mut load, object(p));
        }
        m.prepare_users(&mut load);
        (load, catalog)
    }

    /// An event's payload as the mapper takes it.
    fn object(payload: &[u8]) -> Object<'_> {
        match Json::parse(payload) {
            Ok(Json::Object(o)) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    fn col<'a>(t: &'a TableLoad, row: usize, name: &str) -> &'a Cell {
        let i = t
            .columns
            .iter()
            .position(|(c, _)| c == name)
            .unwrap_or_else(|| panic!("no column {name}: {:?}", t.columns));
        &t.rows[row][i]
    }

    #[test]
    fn is_reserved_agrees_with_reserved_columns() {
        for (table, is_event) in [
            ("tracks", false),
            ("order_completed", true),
            ("identifies", false),
            ("users", false),
            ("pages", false),
            ("screens", false),
            ("groups", false),
            ("aliases", false),
            ("discards", false),
        ] {
            let reserved = reserved_columns(table, is_event);
            for (c, _) in &reserved {
                assert!(is_reserved(table, is_event, c), "{table}.{c}");
            }
            for c in [
                "revenue",
                "event",
                "name",
                "group_id",
                "previous_id",
                "reason",
                "id",
            ] {
                assert_eq!(
                    is_reserved(table, is_event, c),
                    reserved.iter().any(|(r, _)| *r == c),
                    "{table}.{c}"
                );
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(snake_case("Order Completed"), "order_completed");
        assert_eq!(snake_case("orderId"), "order_id");
        assert_eq!(snake_case("2FA Enabled!"), "_2fa_enabled");
        assert_eq!(snake_case("page.path"), "page_path");
        let long = "x".repeat(80);
        let cut = fit_identifier(&long, 63);
        assert_eq!(cut.len(), 63);
        assert_ne!(
            cut,
            fit_identifier(&"x".repeat(81), 63),
            "distinct long names stay distinct"
        );
    }

    #[test]
    fn nested_names_are_prefixed_and_snake_cased() {
        let (load, _) = map(&[json!({"type": "page", "messageId": "p1",
            "context": {"2FA": true, "Page": {"URL Path": "/x"}, "!!": 3, "userAgent": "ua"},
            "properties": {"orderId": 7}})]);
        let pages = &load.tables["pages"];
        assert_eq!(col(pages, 0, "context__2fa"), &Cell::Bool(true));
        assert_eq!(
            col(pages, 0, "context_page_url_path"),
            &Cell::Text("/x".into())
        );
        assert_eq!(
            col(pages, 0, "context_user_agent"),
            &Cell::Text("ua".into())
        );
        assert_eq!(col(pages, 0, "order_id"), &Cell::Int(7));
        assert!(
            !pages
                .columns
                .iter()
                .any(|(c, _)| c == "context" || c == "context_"),
            "a key with no letter or digit gives no column: {:?}",
            pages.columns
        );
    }

    #[test]
    fn a_track_lands_in_tracks_and_its_event_table() {
        let (load, _) = map(&[
            json!({"type": "track", "event": "Order Completed", "messageId": "m1",
            "userId": "u1", "receivedAt": "2024-05-01T12:00:00.000Z", "timestamp": "2024-05-01T11:59:59.000Z",
            "properties": {"revenue": 9.5, "count": 2, "paid": true, "at": "2024-05-01T10:00:00Z", "tags": ["a"], "id": "p-1"},
            "context": {"page": {"path": "/cart"}, "library": {"name": "js"}}}),
        ]);
        let tracks = &load.tables["tracks"];
        assert_eq!(
            col(tracks, 0, "event"),
            &Cell::Text("order_completed".into())
        );
        assert_eq!(
            col(tracks, 0, "event_text"),
            &Cell::Text("Order Completed".into())
        );
        assert_eq!(
            col(tracks, 0, "context_page_path"),
            &Cell::Text("/cart".into())
        );
        assert!(
            tracks.columns.iter().all(|(c, _)| c != "revenue"),
            "tracks has no properties"
        );
        let t = &load.tables["order_completed"];
        assert_eq!(col(t, 0, "revenue"), &Cell::Float(9.5));
        assert_eq!(col(t, 0, "count"), &Cell::Int(2));
        assert_eq!(col(t, 0, "paid"), &Cell::Bool(true));
        assert!(matches!(col(t, 0, "at"), Cell::Timestamp(_)));
        assert_eq!(col(t, 0, "tags"), &Cell::Text("[\"a\"]".into()));
        assert_eq!(
            col(t, 0, "property_id"),
            &Cell::Text("p-1".into()),
            "reserved names get a prefix"
        );
        assert_eq!(col(t, 0, "id"), &Cell::Text("m1".into()));
        assert!(matches!(col(t, 0, "received_at"), Cell::Timestamp(_)));
    }

    #[test]
    fn first_type_wins_and_misfits_are_discarded() {
        let (load, catalog) = map(&[
            json!({"type": "identify", "messageId": "a", "userId": "u1", "traits": {"age": 30, "plan": "pro"}}),
            json!({"type": "identify", "messageId": "b", "userId": "u2", "traits": {"age": "old", "email": "x@y.z"}}),
        ]);
        let t = &load.tables["identifies"];
        assert_eq!(col(t, 1, "age"), &Cell::Null);
        assert_eq!(col(t, 1, "email"), &Cell::Text("x@y.z".into()));
        assert_eq!(load.discards.len(), 1);
        let d = &load.discards[0];
        assert_eq!(
            (
                d.table.as_str(),
                d.column.as_str(),
                d.value.as_str(),
                d.row_id.as_str()
            ),
            ("identifies", "age", "old", "b")
        );
        assert!(d.reason.contains("does not fit"), "{}", d.reason);
        assert_eq!(catalog.schemas["web"]["identifies"]["age"], ColumnType::Int);
        assert_eq!(load.users, ["u1", "u2"]);
        let users = &load.tables["users"];
        assert!(users.columns.iter().any(|(c, _)| c == "email"));
    }

    #[test]
    fn colliding_event_names_and_caps() {
        let (load, _) =
            map(&[json!({"type": "track", "event": "Users", "messageId": "a", "userId": "u"})]);
        assert!(load.tables.contains_key("event_users"));
        let mut catalog = Catalog::default();
        let mut load = SchemaLoad {
            schema: "web".into(),
            ..SchemaLoad::default()
        };
        let mut m = Mapper::new(
            &mut catalog,
            Caps {
                max_tables: 2,
                max_columns: 11,
                identifier_limit: 63,
            },
            timestamp::now(),
        );
        let first = json!({"type": "track", "event": "A", "messageId": "a", "userId": "u", "properties": {"x": 1, "y": 2}}).to_string();
        let second =
            json!({"type": "track", "event": "B", "messageId": "b", "userId": "u"}).to_string();
        m.add(&mut load, object(first.as_bytes()));
        m.add(&mut load, object(second.as_bytes()));
        assert!(!load.tables.contains_key("b"), "over the table cap");
        assert!(
            load.discards
                .iter()
                .any(|d| d.table == "b" && d.reason.contains("cap of 2 tables"))
        );
        assert!(
            load.discards
                .iter()
                .any(|d| d.column == "y" && d.reason.contains("cap of 11 columns"))
        );
    }
}
