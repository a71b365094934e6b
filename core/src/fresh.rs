//! Names for fresh destinations on a real broker (a stream, queue or topic made for one test or
//! benchmark run), shared by every broker crate's `fresh_destination`: unique across processes,
//! runs and calls, and telling which process made them, so what a process now gone left behind
//! can be found and removed.
//!
//! ```
//! use oncely_core::fresh::{made_by_a_gone_process, unique_name};
//!
//! let name = unique_name("my-tests.", "orders/eu");
//! assert!(name.starts_with(&format!("my-tests.{}-", std::process::id())));
//! assert!(name.ends_with("-orders-eu"));
//! // This process is alive, so its names are not leftovers.
//! assert!(!made_by_a_gone_process(&name, "my-tests."));
//! ```

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `<prefix><pid>-<millis>-<n>-<label>`: unique across processes on one host (the pid), runs
/// (the time) and calls in this process (the counter). The label's characters other than
/// letters, digits, `-` and `_` become `-`, so the name is valid on every broker.
pub fn unique_name(prefix: &str, label: &str) -> String {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let label: String = label
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .collect();
    format!("{prefix}{}-{millis}-{n}-{label}", std::process::id())
}

/// Whether this is the first call for `prefix` in this process: leftovers are looked for once.
pub fn first_use_of(prefix: &str) -> bool {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.get_or_insert_with(HashSet::new)
        .insert(prefix.to_owned())
}

/// Whether `name` (made by [`unique_name`] with `prefix`) belongs to a process that is gone
/// (no `/proc/<pid>`). A name of another shape is never a leftover.
pub fn made_by_a_gone_process(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
    else {
        return false;
    };
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && pid != std::process::id().to_string()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_say_their_process() {
        let a = unique_name("t.", "x y");
        let b = unique_name("t.", "x y");
        assert_ne!(a, b);
        assert!(a.ends_with("-x-y"), "{a}");
        let gone = a.replacen(&std::process::id().to_string(), "4194304999", 1);
        assert!(made_by_a_gone_process(&gone, "t."));
        assert!(!made_by_a_gone_process(&a, "t."));
        assert!(!made_by_a_gone_process("t.other", "t."));
        assert!(!made_by_a_gone_process("u.123-1-1-x", "t."));
    }

    #[test]
    fn leftovers_are_looked_for_once_per_prefix() {
        assert!(first_use_of("once."));
        assert!(!first_use_of("once."));
        assert!(first_use_of("twice."));
    }
}
