//! What the `oncely serve` test binaries share: the gateway as a process on loopback.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub mod https;

pub const BIN: &str = env!("CARGO_BIN_EXE_oncely");
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `oncely serve`, killed when dropped.
pub struct Gateway {
    pub child: Child,
    /// The address it listens on, as it printed it.
    pub addr: SocketAddr,
    /// `https` when it listens with TLS, else `http`, as it printed it.
    pub scheme: String,
    /// Every line it printed on stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Receives once its stderr is closed.
    pub ended: mpsc::Receiver<()>,
}

impl Gateway {
    /// A gateway on the SQLite store `dir/o.db` in front of `upstream`, with `extra` flags.
    pub fn start(dir: &Path, upstream: &str, extra: &[&str]) -> Gateway {
        let store = format!("sqlite:{}", dir.join("o.db").display());
        Gateway::start_on(&store, dir, upstream, extra)
    }

    /// A gateway on the store at `store` (a `--store` URL), run in `dir`.
    pub fn start_on(store: &str, dir: &Path, upstream: &str, extra: &[&str]) -> Gateway {
        Gateway::start_with_env(store, dir, upstream, extra, &[])
    }

    /// [`Gateway::start_on`], with these environment variables set.
    pub fn start_with_env(
        store: &str,
        dir: &Path,
        upstream: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut child = Command::new(BIN)
            .args(["--store", store, "serve", "--upstream", upstream])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir)
            .env_remove("ONCELY_STORE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (end_tx, ended) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening on ")
                    && let Some((scheme, rest)) = rest.split_once("://")
                {
                    let addr = rest.split(',').next().unwrap().to_owned();
                    let _ = addr_tx.send((scheme.to_owned(), addr));
                }
                log.lock().unwrap().push(line);
            }
            let _ = end_tx.send(());
        });
        let (scheme, addr) = match addr_rx.recv_timeout(PATIENCE) {
            Ok((scheme, addr)) => (scheme, addr.parse().unwrap()),
            Err(_) => panic!("no bound address on stderr: {:?}", stderr.lock().unwrap()),
        };
        Gateway {
            child,
            addr,
            scheme,
            stderr,
            ended,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
