//! An HTTPS server in another process (`tests/https_upstream.py`), with a certificate the test
//! makes: an `https://` upstream for `oncely serve`, a handler for `oncely consume --deliver`. It
//! answers each POST 201 with its Idempotency-Key and how often that key was executed there.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The HTTPS upstream (`tests/https_upstream.py`), killed on drop.
pub struct HttpsUpstream {
    child: Child,
    port: u16,
}

impl HttpsUpstream {
    pub fn start(cert: &Path, key: &Path) -> HttpsUpstream {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/https_upstream.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([cert, key])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the upstream prints its port");
        HttpsUpstream { child, port }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// How many times each key was executed, read over HTTPS trusting `ca`.
    pub fn executions(&self, ca: &Path) -> String {
        let read = format!(
            "import ssl, urllib.request; \
             ctx = ssl.create_default_context(cafile={ca:?}); \
             print(urllib.request.urlopen({url:?}, context=ctx).read().decode())",
            url = format!("{}/executions", self.url()),
        );
        let out = Command::new("python3")
            .args(["-c", &read])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
