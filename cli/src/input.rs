//! Input lines read on their own thread, handed out in batches.
//!
//! A blocking reader thread keeps the next lines ready while the main loop waits on the store,
//! so a file arrives in full batches and a slow stream is passed on line by line as it comes.

use std::io::{self, BufRead, BufReader, Read};

use tokio::sync::mpsc;

/// One input line, exactly as read (including its `\n`, if it had one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    /// The raw bytes, newline included.
    pub bytes: Vec<u8>,
}

/// The receiving end of the reader thread.
pub struct LineReader {
    lines: mpsc::Receiver<io::Result<Line>>,
    /// A read error found while filling a batch, reported after the lines before it.
    failed: Option<io::Error>,
}

/// Starts a thread reading `input` line by line, keeping at most `capacity` lines ahead.
pub fn spawn(input: impl Read + Send + 'static, capacity: usize) -> io::Result<LineReader> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    std::thread::Builder::new()
        .name("oncely-input".into())
        .spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 16, input);
            let mut number = 0;
            loop {
                let mut bytes = Vec::new();
                let item = match reader.read_until(b'\n', &mut bytes) {
                    Ok(0) => break,
                    Ok(_) => {
                        number += 1;
                        Ok(Line { number, bytes })
                    }
                    Err(err) => Err(err),
                };
                let failed = item.is_err();
                // A closed channel means the main loop is gone: stop reading.
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        })?;
    Ok(LineReader {
        lines: rx,
        failed: None,
    })
}

impl LineReader {
    /// Waits for the next line, then takes whatever else is ready, up to `max` lines in all.
    /// `None` at the end of input.
    pub async fn next_batch(&mut self, max: usize) -> Option<io::Result<Vec<Line>>> {
        if let Some(err) = self.failed.take() {
            return Some(Err(err));
        }
        let mut batch = match self.lines.recv().await? {
            Ok(line) => vec![line],
            Err(err) => return Some(Err(err)),
        };
        while batch.len() < max {
            match self.lines.try_recv() {
                Ok(Ok(line)) => batch.push(line),
                Ok(Err(err)) => {
                    self.failed = Some(err);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(Ok(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_keep_their_bytes_and_numbers_and_batches_are_bounded() {
        let input: &'static [u8] = b"a\n\nb\r\nlast-without-newline";
        let mut reader = spawn(input, 16).unwrap();
        let mut all = Vec::new();
        while let Some(batch) = reader.next_batch(2).await {
            let batch = batch.unwrap();
            assert!((1..=2).contains(&batch.len()));
            all.extend(batch);
        }
        let got: Vec<(u64, &[u8])> = all.iter().map(|l| (l.number, &l.bytes[..])).collect();
        let want: Vec<(u64, &[u8])> = vec![
            (1, b"a\n"),
            (2, b"\n"),
            (3, b"b\r\n"),
            (4, b"last-without-newline"),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_read_error_comes_after_the_lines_before_it() {
        struct FailsAfterOneLine(bool);
        impl Read for FailsAfterOneLine {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(io::Error::other("disk on fire"));
                }
                buf[..3].copy_from_slice(b"ok\n");
                Ok(3)
            }
        }
        let mut reader = spawn(FailsAfterOneLine(false), 16).unwrap();
        // Let the thread reach the error, so both are queued when the batch is taken.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let first = reader.next_batch(10).await.unwrap().unwrap();
        assert_eq!(first[0].bytes, b"ok\n");
        let err = reader.next_batch(10).await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert!(reader.next_batch(10).await.is_none());
    }
}
