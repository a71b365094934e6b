//! Stopping on a signal - SIGINT or SIGTERM on Unix; Ctrl-C, Ctrl-Break, closing the console
//! or a system shutdown on Windows - with a second one for stopping at once.

use anyhow::Result;

/// The stop signals, installed before the setup (so that one sent during it is not lost).
pub struct Stop(os::Signals);

impl Stop {
    pub fn install() -> Result<Stop> {
        Ok(Stop(os::Signals::install()?))
    }

    /// Completes at the next stop signal.
    pub async fn first(&mut self) {
        self.0.recv().await
    }

    /// Completes at the stop signal after the first.
    pub async fn second(mut self) {
        self.first().await
    }
}

#[cfg(unix)]
mod os {
    use anyhow::{Context, Result};
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub struct Signals {
        interrupt: Signal,
        terminate: Signal,
    }

    impl Signals {
        pub fn install() -> Result<Signals> {
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
    }
}

#[cfg(windows)]
mod os {
    use anyhow::{Context, Result};
    use tokio::signal::windows::{
        CtrlBreak, CtrlC, CtrlClose, CtrlShutdown, ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown,
    };

    pub struct Signals {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        shutdown: CtrlShutdown,
    }

    impl Signals {
        pub fn install() -> Result<Signals> {
            Ok(Signals {
                c: ctrl_c().context("listening for Ctrl-C")?,
                brk: ctrl_break().context("listening for Ctrl-Break")?,
                close: ctrl_close().context("listening for the console closing")?,
                shutdown: ctrl_shutdown().context("listening for a shutdown")?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.c.recv() => {}
                _ = self.brk.recv() => {}
                _ = self.close.recv() => {}
                _ = self.shutdown.recv() => {}
            }
        }
    }
}
