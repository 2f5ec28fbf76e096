//! The progress line of uploads and downloads, on a terminal only.

use std::io::{self, IsTerminal, Read};
use std::time::Duration;

/// A progress line on a terminal; nothing when stderr is not one.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .expect("static template"),
        );
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress(Some(bar))
    }

    pub fn set(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(bytes);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Counts bytes read, for the progress line.
pub struct CountingReader<'a> {
    inner: Box<dyn Read + Send>,
    read: u64,
    progress: &'a Progress,
}

impl<'a> CountingReader<'a> {
    pub fn new(inner: Box<dyn Read + Send>, progress: &'a Progress) -> Self {
        CountingReader {
            inner,
            read: 0,
            progress,
        }
    }
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.set(self.read);
        Ok(n)
    }
}
