//! Key layout: where each piece of a scope lives, all under one hash tag per scope.
//!
//! ```text
//! {prefix}:{<scope>}:r:<key>     string: one record (see `record.rs`)
//! {prefix}:{<scope>}:v:<entity>  string: the version guard's stored version
//! {prefix}:scopes                set: every scope that has held a record (purge, stats)
//! {prefix}:{<scope>}:x           sorted set: legacy hash records by expires_at (read, emptied)
//! {prefix}:{<scope>}:c           sorted set: legacy completed hash records by expires_at
//! ```
//!
//! Redis Cluster hashes only the text between the first `{` and the next `}`: the scope. So one
//! scope's records and indexes share a slot (a script over them never crosses nodes) while
//! different scopes spread over the cluster. The prefix may not contain braces, and the scope
//! is escaped (`%` `{` `}` as `%25` `%7B` `%7D`) so that no scope can end its tag early or
//! collide with another scope's keys; keys follow the tag verbatim, since nothing comes after
//! them.

use oncely_core::{Key, Scope};

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}:{<escaped scope>}`: the part every key of the scope starts with.
    fn tagged(&self, scope: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + scope.len() + 4);
        out.push_str(&self.prefix);
        out.push_str(":{");
        for ch in scope.chars() {
            match ch {
                '%' => out.push_str("%25"),
                '{' => out.push_str("%7B"),
                '}' => out.push_str("%7D"),
                other => out.push(other),
            }
        }
        out.push('}');
        out
    }

    /// The prefix of a scope's record keys; a record key is this plus the key.
    pub fn records(&self, scope: &str) -> String {
        self.tagged(scope) + ":r:"
    }

    /// A `SCAN` pattern matching every record key of every scope under this prefix, and some
    /// other keys of theirs too: [`scope_of_record`](Self::scope_of_record) tells them apart.
    pub fn all_records_pattern(&self) -> String {
        glob_escaped(&self.prefix) + ":{*"
    }

    /// The escaped scope (the hash tag) of a record key of this prefix; `None` for any other
    /// key. Exact, since an escaped scope holds no `}`: the tag ends at the first one.
    pub fn scope_of_record<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = key
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":{")?;
        let close = rest.iter().position(|&b| b == b'}')?;
        rest[close + 1..]
            .starts_with(b":r:")
            .then_some(&rest[..close])
    }

    pub fn record(&self, scope: &Scope, key: &Key) -> String {
        self.records(scope.as_str()) + key.as_str()
    }

    /// The legacy index of every hash record by expires_at (earlier versions wrote it).
    pub fn expiry_index(&self, scope: &str) -> String {
        self.tagged(scope) + ":x"
    }

    /// The legacy index of completed hash records by expires_at.
    pub fn completed_index(&self, scope: &str) -> String {
        self.tagged(scope) + ":c"
    }

    pub fn version(&self, scope: &Scope, entity: &Key) -> String {
        self.tagged(scope.as_str()) + ":v:" + entity.as_str()
    }

    /// The registry of scopes. It has no tag: on a cluster it lives in a slot of its own.
    pub fn registry(&self) -> String {
        format!("{}:scopes", self.prefix)
    }
}

/// `text` matching only itself in a `SCAN` pattern.
fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_scope_shares_its_hash_tag() {
        let layout = Layout::new("app");
        let scope = Scope::new("ten}ant{x%").unwrap();
        let key = Key::new("{k}").unwrap();
        let tag = hash_tag(&layout.record(&scope, &key)).to_owned();
        assert_eq!(tag, "ten%7Dant%7Bx%25");
        for other in [
            layout.expiry_index(scope.as_str()),
            layout.completed_index(scope.as_str()),
            layout.version(&scope, &key),
        ] {
            assert_eq!(hash_tag(&other), tag);
        }
        assert_eq!(layout.record(&scope, &key), "app:{ten%7Dant%7Bx%25}:r:{k}");
    }

    #[test]
    fn only_record_keys_of_the_prefix_have_a_record_scope() {
        let layout = Layout::new("app");
        let scope = Scope::new("ten}ant").unwrap();
        let key = Key::new("k}:r:x").unwrap();
        let record = layout.record(&scope, &key);
        assert_eq!(
            layout.scope_of_record(record.as_bytes()),
            Some(&b"ten%7Dant"[..])
        );
        for other in [
            layout.version(&scope, &key),
            layout.expiry_index(scope.as_str()),
            layout.registry(),
            Layout::new("ap").record(&scope, &key),
            Layout::new("app:x").record(&scope, &key),
        ] {
            assert_eq!(layout.scope_of_record(other.as_bytes()), None, "{other}");
        }
        assert_eq!(Layout::new("a*[").all_records_pattern(), "a\\*\\[:{*");
    }

    #[test]
    fn a_brace_in_a_scope_cannot_make_two_operations_share_a_key() {
        let layout = Layout::new("p");
        let a = layout.record(&Scope::new("x}:r:y").unwrap(), &Key::new("z").unwrap());
        let b = layout.record(&Scope::new("x").unwrap(), &Key::new("y}:r:z").unwrap());
        assert_ne!(a, b);
    }
}
