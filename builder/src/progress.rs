//! Step progress for the terminal: a spinner per step when stderr is a terminal,
//! plain lines otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How much the builder says while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
}

/// Reports build steps.
#[derive(Debug)]
pub struct Progress {
    verbosity: Verbosity,
    bar: Option<ProgressBar>,
    step: Option<(String, Instant)>,
    /// Every finished step and how long it took, for `--json`.
    times: Vec<StepTime>,
}

/// How long a step took.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepTime {
    pub step: String,
    pub seconds: f64,
}

impl Progress {
    pub fn new(verbosity: Verbosity) -> Progress {
        Progress {
            verbosity,
            bar: None,
            step: None,
            times: Vec::new(),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// The steps finished so far and how long each took.
    pub fn times(&self) -> &[StepTime] {
        &self.times
    }

    /// Starts a step (ending the previous one).
    pub fn step(&mut self, name: &str) {
        self.finish();
        if self.verbosity == Verbosity::Quiet {
            self.step = Some((name.to_string(), Instant::now()));
            return;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        } else {
            eprintln!("==> {name}");
        }
        self.step = Some((name.to_string(), Instant::now()));
    }

    /// A detail of the current step.
    pub fn detail(&self, text: &str) {
        if let (Some(bar), Some((name, _))) = (&self.bar, &self.step) {
            bar.set_message(format!("{name}: {text}"));
        }
    }

    /// Ends the current step.
    pub fn finish(&mut self) {
        if let Some((name, start)) = self.step.take() {
            let took = start.elapsed().as_secs_f64();
            self.times.push(StepTime {
                step: name.clone(),
                seconds: took,
            });
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            if self.verbosity != Verbosity::Quiet {
                if std::io::stderr().is_terminal() {
                    eprintln!("✓ {name} ({took:.1}s)");
                } else {
                    eprintln!("    {name}: {took:.1} s");
                }
            }
        }
    }

    /// A byte count for the current step (a download, a file system, a disk
    /// write): the step's spinner becomes a bar with bytes, total and rate on a
    /// terminal; nothing otherwise, so logs and `--json` runs stay line-based.
    /// `total` is `None` when the size is not known in advance.
    pub fn bytes(&self, total: Option<u64>) -> Bytes {
        let Some(bar) = &self.bar else {
            return Bytes(None);
        };
        let template = match total {
            Some(_) => "{msg} [{bar:30.cyan/dim}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            None => "{spinner:.cyan} {msg} {bytes} {bytes_per_sec} {elapsed:.dim}",
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_length(total.unwrap_or(0));
        bar.set_position(0);
        Bytes(Some(bar.clone()))
    }

    /// A line of output that is not a step (the result).
    pub fn say(&self, text: &str) {
        if self.verbosity != Verbosity::Quiet {
            eprintln!("{text}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Bytes done in a step, from [`Progress::bytes`]; does nothing when not on a
/// terminal. Dropping it turns the bar back into the step's spinner.
#[derive(Debug)]
pub struct Bytes(Option<ProgressBar>);

impl Bytes {
    /// A counter that shows nothing (for callers without a [`Progress`]).
    pub fn hidden() -> Bytes {
        Bytes(None)
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Sets the bytes done so far (for work measured from outside, such as
    /// the size of a file another program is writing).
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(done);
        }
    }

    /// Counts what passes through `reader`.
    pub fn reader<R: std::io::Read>(&self, reader: R) -> CountingReader<'_, R> {
        CountingReader {
            inner: reader,
            bytes: self,
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
        }
    }
}

/// A reader that counts its bytes into a [`Bytes`].
#[derive(Debug)]
pub struct CountingReader<'a, R> {
    inner: R,
    bytes: &'a Bytes,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_hidden_counter_passes_every_byte_through() {
        let bytes = Bytes::hidden();
        let mut out = Vec::new();
        bytes
            .reader(&b"twelve bytes"[..])
            .read_to_end(&mut out)
            .expect("reading");
        assert_eq!(out, b"twelve bytes");
    }

    #[test]
    fn off_a_terminal_there_is_no_bar() {
        // The test harness's stderr is not a terminal: steps print lines and
        // byte counts show nothing.
        let mut progress = Progress::new(Verbosity::Quiet);
        progress.step("downloading");
        assert!(progress.bytes(Some(10)).0.is_none());
    }
}
