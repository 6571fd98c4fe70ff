//! The `users` rows a load's own identifies give: per user, per trait column, the latest
//! non-null value of the batch, ranked like the full recompute (`sql::recompute_users`):
//! `timestamp` newest first, then `received_at`, a missing time last.
//!
//! A batch's rows are all a user's `users` row needs when every identify of the batch is newer
//! than every identify the table already holds for that user: then each trait is the batch's
//! latest non-null value, or, when the batch has none, the value the row already has. The
//! loader checks that per user (`first_timestamp`) and upserts these rows for the users it
//! holds for; the others (an identify that arrived late, a repeated one) are recomputed from
//! the whole of `identifies`. In production identifies arrive about in order, so the recompute,
//! a sort per trait per user over the user's whole history, is the rare path.

use std::cmp::Ordering;
use std::collections::HashMap;

use time::OffsetDateTime;

use super::schema::{Cell, TableLoad};

/// The batch's users, in the order they first appear.
#[derive(Debug, Default)]
pub struct BatchUsers {
    /// Per user: its id, its earliest `timestamp` in the batch (`None` when one of its
    /// identifies has none: such a row ranks below every older one, so the user is recomputed),
    /// and its row, one cell per column of `users`, the `uuid_ts` cell `Null` (the engine
    /// writes the load's time).
    pub users: Vec<(String, Option<OffsetDateTime>, Vec<Cell>)>,
}

/// Where the ranking and copied columns of `users` sit in `identifies`.
struct Layout {
    user_id: usize,
    timestamp: usize,
    received_at: usize,
    /// Per `users` column, the `identifies` column its value comes from (`None`: the column
    /// has no value in the batch, like `id` and `uuid_ts`, which are set apart).
    source: Vec<Option<usize>>,
}

impl Layout {
    /// `None` when `identifies` lacks a column the ranking needs, or gives a trait in another
    /// type than `users` holds it (then only the recompute can say what the row is).
    fn of(identifies: &TableLoad, users: &TableLoad) -> Option<Layout> {
        let mut source = Vec::with_capacity(users.columns.len());
        for (c, ty) in &users.columns {
            source.push(match c.as_str() {
                "id" | "uuid_ts" => None,
                _ => match identifies.column_index(c) {
                    Some(i) if identifies.columns[i].1 == *ty => Some(i),
                    Some(_) => return None,
                    None => None,
                },
            });
        }
        Some(Layout {
            user_id: identifies.column_index("user_id")?,
            timestamp: identifies.column_index("timestamp")?,
            received_at: identifies.column_index("received_at")?,
            source,
        })
    }
}

fn time_at(row: &[Cell], at: usize) -> Option<OffsetDateTime> {
    match row.get(at) {
        Some(Cell::Timestamp(t)) => Some(*t),
        _ => None,
    }
}

/// Newest first by `timestamp`, then `received_at`; a missing time after every present one.
fn rank(a: &[Cell], b: &[Cell], l: &Layout) -> Ordering {
    let newest_first = |x: Option<OffsetDateTime>, y: Option<OffsetDateTime>| match (x, y) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    newest_first(time_at(a, l.timestamp), time_at(b, l.timestamp))
        .then_with(|| newest_first(time_at(a, l.received_at), time_at(b, l.received_at)))
}

impl BatchUsers {
    /// The `users` rows (in `users`'s columns) of `identifies`'s rows, for the users in
    /// `wanted`. `None` when `identifies` cannot give them (see `Layout::of`).
    pub fn of(identifies: &TableLoad, users: &TableLoad, wanted: &[String]) -> Option<BatchUsers> {
        let layout = Layout::of(identifies, users)?;
        let mut rows_of: HashMap<&str, Vec<&Vec<Cell>>, foldhash::fast::FixedState> =
            HashMap::with_capacity_and_hasher(wanted.len(), Default::default());
        for w in wanted {
            rows_of.insert(w.as_str(), Vec::new());
        }
        for row in &identifies.rows {
            if let Some(Cell::Text(user)) = row.get(layout.user_id)
                && let Some(rows) = rows_of.get_mut(user.as_str())
            {
                rows.push(row);
            }
        }
        let mut out = BatchUsers::default();
        for user in wanted {
            let Some(rows) = rows_of.get_mut(user.as_str()) else {
                continue;
            };
            if rows.is_empty() {
                continue;
            }
            rows.sort_by(|a, b| rank(a, b, &layout));
            // Newest first with a missing time last: the last row has the earliest
            // `timestamp`, or none when any row lacks one.
            let first_timestamp = rows.last().and_then(|r| time_at(r, layout.timestamp));
            let cells = (users.columns.iter().zip(&layout.source))
                .map(|((c, _), source)| match (c.as_str(), source) {
                    ("id", _) => Cell::Text(user.clone()),
                    ("received_at", _) => rows
                        .iter()
                        .filter_map(|r| time_at(r, layout.received_at))
                        .max()
                        .map_or(Cell::Null, Cell::Timestamp),
                    (_, Some(at)) => rows
                        .iter()
                        .map(|r| &r[*at])
                        .find(|c| **c != Cell::Null)
                        .cloned()
                        .unwrap_or(Cell::Null),
                    (_, None) => Cell::Null,
                })
                .collect();
            out.users.push((user.clone(), first_timestamp, cells));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::schema::ColumnType;

    fn t(s: &str) -> Cell {
        Cell::Timestamp(crate::timestamp::parse(s).expect("a timestamp"))
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn table(columns: &[(&str, ColumnType)], rows: Vec<Vec<Cell>>) -> TableLoad {
        let mut t = TableLoad::new(
            columns.iter().map(|(c, t)| (c.to_string(), *t)).collect(),
            false,
        );
        t.rows = rows;
        t
    }

    const IDENTIFIES: &[(&str, ColumnType)] = &[
        ("id", ColumnType::Text),
        ("user_id", ColumnType::Text),
        ("received_at", ColumnType::Timestamp),
        ("timestamp", ColumnType::Timestamp),
        ("plan", ColumnType::Text),
        ("age", ColumnType::Int),
    ];
    const USERS: &[(&str, ColumnType)] = &[
        ("id", ColumnType::Text),
        ("received_at", ColumnType::Timestamp),
        ("uuid_ts", ColumnType::Timestamp),
        ("plan", ColumnType::Text),
        ("age", ColumnType::Int),
    ];

    #[test]
    fn each_trait_is_the_latest_non_null_of_the_batch() {
        let identifies = table(
            IDENTIFIES,
            vec![
                // Out of order on purpose: the newest one comes first in the batch.
                vec![
                    text("i3"),
                    text("u1"),
                    t("2024-05-03T00:00:00Z"),
                    t("2024-05-03T00:00:00Z"),
                    text("pro"),
                    Cell::Null,
                ],
                vec![
                    text("i1"),
                    text("u1"),
                    t("2024-05-04T00:00:00Z"),
                    t("2024-05-01T00:00:00Z"),
                    text("free"),
                    Cell::Int(30),
                ],
                vec![
                    text("i2"),
                    text("u2"),
                    t("2024-05-02T00:00:00Z"),
                    Cell::Null,
                    text("team"),
                    Cell::Null,
                ],
            ],
        );
        let users = table(USERS, Vec::new());
        let batch =
            BatchUsers::of(&identifies, &users, &["u1".into(), "u2".into()]).expect("a layout");
        let (id, first, row) = &batch.users[0];
        assert_eq!(id, "u1");
        assert_eq!(*first, time_at(&[t("2024-05-01T00:00:00Z")], 0));
        assert_eq!(
            row,
            &vec![
                text("u1"),
                t("2024-05-04T00:00:00Z"),
                Cell::Null,
                text("pro"),
                Cell::Int(30)
            ]
        );
        // A user with an identify without `timestamp` has no first timestamp: recomputed.
        let (id, first, _) = &batch.users[1];
        assert_eq!((id.as_str(), *first), ("u2", None));
    }

    #[test]
    fn a_trait_typed_apart_from_users_gives_no_rows() {
        let identifies = table(IDENTIFIES, Vec::new());
        let mut users_columns = USERS.to_vec();
        users_columns[4] = ("age", ColumnType::Text);
        let users = table(&users_columns, Vec::new());
        assert!(BatchUsers::of(&identifies, &users, &[]).is_none());
    }
}
