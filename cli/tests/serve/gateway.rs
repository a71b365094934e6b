//! The gateway process: stopping it, and what it printed.

use std::time::{Duration, Instant};

use crate::support::{Gateway, PATIENCE};

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// SIGTERM; the exit status and everything printed on stderr.
    pub fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let _ = self.ended.recv_timeout(PATIENCE);
                return (status.code(), self.stderr.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "oncely serve kept running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Gateway {
    /// SIGKILL: no shutdown, no summary; returns once the process is gone.
    pub fn kill9(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let status = self.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

pub fn assert_summary_and_exit_0((code, stderr): &(Option<i32>, Vec<String>), summary: &str) {
    assert_eq!(*code, Some(0), "{stderr:#?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some(summary),
        "{stderr:#?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("panicked")),
        "{stderr:#?}"
    );
}
