//! Options, and parsing them from a `sqlite:` URL.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use oncely_core::Error;

/// Page size of a new database file.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// Page cache per connection, in MiB. Random keys touch pages all over the table, so a cache
/// far above SQLite's 2 MiB default saves a read per claim (measured: BENCHMARKS.md).
pub const DEFAULT_CACHE_MIB: u32 = 64;
/// WAL pages written before a checkpoint copies them back. A page rewritten by many commits
/// is then copied once, not once per 1,000 pages (SQLite's default).
pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 10_000;

/// How the SQLite store is opened.
///
/// From a URL: `sqlite:PATH`, `sqlite://PATH` (relative) or `sqlite:///PATH` (absolute), with
/// optional query parameters:
///
/// | parameter | meaning | default |
/// |---|---|---|
/// | `batch` | most operations committed in one transaction (group commit) | 2048 |
/// | `busy_timeout_ms` | how long to wait for another process's write lock | 5000 |
/// | `page_size` | page size of a **new** database file, in bytes | 4096 |
/// | `cache_mib` | page cache, in MiB | 64 |
/// | `wal_autocheckpoint` | WAL pages between automatic checkpoints | 10000 |
/// | `migrate` | `false` to skip applying the schema (you ran `migrations/` yourself) | `true` |
///
/// ```
/// use oncely_sqlite::SqliteOptions;
/// let opts: SqliteOptions = "sqlite:///var/lib/app/oncely.db?batch=256".parse()?;
/// assert_eq!(opts.path.to_str(), Some("/var/lib/app/oncely.db"));
/// assert_eq!(opts.max_batch, 256);
/// # Ok::<(), oncely_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The database file (`:memory:` for a private in-memory database).
    ///
    /// The store's connection is opened with `SQLITE_OPEN_URI`, so this may also be a SQLite URI
    /// filename, such as `file:/var/lib/app/oncely.db?vfs=NAME` to run the store on a VFS you
    /// registered (`tests/durability.rs` runs it on a power-loss simulator that way). Set it on
    /// the struct: a `sqlite:` URL reads the `?` as the start of its own parameters.
    pub path: PathBuf,
    /// Most operations committed in one transaction.
    pub max_batch: usize,
    /// How long to wait for another process's write lock before failing.
    pub busy_timeout: Duration,
    /// Page size for a new file; an existing file keeps its own.
    pub page_size: u32,
    /// Page cache, in MiB.
    pub cache_mib: u32,
    /// WAL pages between automatic checkpoints.
    pub wal_autocheckpoint: u32,
    /// Whether to apply the schema migrations on open.
    pub migrate: bool,
}

impl SqliteOptions {
    /// Defaults for the database file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            max_batch: 2048,
            busy_timeout: Duration::from_secs(5),
            page_size: DEFAULT_PAGE_SIZE,
            cache_mib: DEFAULT_CACHE_MIB,
            wal_autocheckpoint: DEFAULT_WAL_AUTOCHECKPOINT,
            migrate: true,
        }
    }

    /// The URL that opens this database, as shown in messages.
    pub fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

impl FromStr for SqliteOptions {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| invalid("a SQLite URL starts with `sqlite:` (e.g. sqlite:oncely.db)"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(invalid("no database path (e.g. sqlite:oncely.db)"));
        }
        let mut opts = SqliteOptions::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(&format!("query parameter `{pair}` has no value")))?;
            let number = || -> Result<u64, Error> {
                value.parse().map_err(|_| {
                    invalid(&format!("`{name}` must be a whole number, not `{value}`"))
                })
            };
            match name {
                "batch" => opts.max_batch = number()?.clamp(1, 100_000) as usize,
                "busy_timeout_ms" => opts.busy_timeout = Duration::from_millis(number()?),
                "page_size" => {
                    let size = number()?;
                    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
                        return Err(invalid(
                            "`page_size` must be a power of two from 512 to 65536",
                        ));
                    }
                    opts.page_size = size as u32;
                }
                "cache_mib" => opts.cache_mib = number()?.clamp(1, 1 << 20) as u32,
                "wal_autocheckpoint" => {
                    opts.wal_autocheckpoint = number()?.clamp(1, 1 << 24) as u32
                }
                "migrate" => {
                    opts.migrate = value
                        .parse()
                        .map_err(|_| invalid("`migrate` must be true or false"))?
                }
                other => {
                    return Err(invalid(&format!(
                        "unknown parameter `{other}` (known: batch, busy_timeout_ms, page_size, cache_mib, wal_autocheckpoint, migrate)"
                    )));
                }
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let path = |u: &str| u.parse::<SqliteOptions>().unwrap().path;
        assert_eq!(path("sqlite:oncely.db"), PathBuf::from("oncely.db"));
        assert_eq!(
            path("sqlite://data/oncely.db"),
            PathBuf::from("data/oncely.db")
        );
        assert_eq!(
            path("sqlite:///tmp/oncely.db"),
            PathBuf::from("/tmp/oncely.db")
        );
        assert_eq!(path("sqlite::memory:"), PathBuf::from(":memory:"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("sqlite:", "no database path"),
            ("sqlite:x.db?batch=many", "whole number"),
            ("sqlite:x.db?page_size=1000", "power of two"),
            ("sqlite:x.db?fsync=no", "unknown parameter"),
            ("sqlite:x.db?batch", "no value"),
            ("postgres://x", "starts with `sqlite:`"),
        ] {
            let err = url.parse::<SqliteOptions>().unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }
}
