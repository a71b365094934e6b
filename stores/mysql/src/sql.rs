//! The SQL of a batch: the record columns, a condition matching many keys, placeholder groups,
//! and padding that keeps the driver's statement cache small.

use oncely_core::Record;
use sqlx::MySql;

/// The columns of `oncely_records`, in the order [`bind_claim`] binds them.
pub(crate) const COLUMNS: &str =
    "scope, `key`, completed, token, attempt, fingerprint, created_at, expires_at, outcome";

/// `items` repeated at the end up to the next power of two: the statements built for a batch
/// then come in a few lengths only, so the driver's prepared-statement cache keeps them instead
/// of preparing a new statement of thousands of placeholders for nearly every batch. Only for
/// statements where a repeated row changes nothing (an `IN` list, an upsert of the same values).
pub(crate) fn padded<T: Copy>(items: &[T]) -> Vec<T> {
    let mut padded = items.to_vec();
    if let Some(&last) = items.last() {
        padded.resize(items.len().next_power_of_two(), last);
    }
    padded
}

/// A condition matching the rows of `ids`, sorted (so rows of one scope are adjacent), and the
/// values to bind to it in order: `(scope = ? AND `key` IN (?, ...)) OR ...`, one group per
/// scope. MariaDB reads that as ranges of the primary key; the row constructor
/// `(scope, `key`) IN ((?, ?), ...)` it planned far more slowly (a batch of 1,000 keys in a
/// table of 200,000: 15 ms against 4.7 ms), and on a small table as a full scan.
pub(crate) fn rows_of<'a>(ids: &[(&'a [u8], &'a [u8])]) -> (String, Vec<&'a [u8]>) {
    let mut condition = String::new();
    let mut values = Vec::with_capacity(ids.len() * 2);
    for group in ids.chunk_by(|a, b| a.0 == b.0) {
        if !condition.is_empty() {
            condition.push_str(" OR ");
        }
        condition.push_str("(scope = ? AND `key` IN (");
        condition.push_str(&vec!["?"; group.len()].join(", "));
        condition.push_str("))");
        values.push(group[0].0);
        values.extend(group.iter().map(|(_, key)| *key));
    }
    (condition, values)
}

/// `n` placeholder groups like `(?, ?)`, comma-separated.
pub(crate) fn groups(group: &str, n: usize) -> String {
    vec![group; n].join(", ")
}

/// Binds a record's columns in [`COLUMNS`] order, as an in-progress claim.
pub(crate) fn bind_claim<'q>(
    query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    r: &'q Record,
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    query
        .bind(r.scope.as_str().as_bytes())
        .bind(r.key.as_str().as_bytes())
        .bind(r.is_completed())
        .bind(r.token as i64)
        .bind(r.attempt as i32)
        .bind(r.fingerprint.map(|f| f.as_bytes().to_vec()))
        .bind(r.created_at.as_millis())
        .bind(r.expires_at.as_millis())
        .bind(r.outcome().map(<[u8]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::rows_of;

    #[test]
    fn rows_of_groups_keys_by_scope() {
        let ids: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"a", b"2"), (b"b", b"1")];
        let (condition, values) = rows_of(&ids);
        assert_eq!(
            condition,
            "(scope = ? AND `key` IN (?, ?)) OR (scope = ? AND `key` IN (?))"
        );
        let expected: Vec<&[u8]> = vec![b"a", b"1", b"2", b"b", b"1"];
        assert_eq!(values, expected);
    }
}
