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
