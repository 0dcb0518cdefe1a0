//! Status reports to the operator: with `[update] report = URL`, the daemon
//! POSTs one JSON document after each round and after the init assessed a boot
//! on trial — the same status as
//! `berth-update status --json`, plus the device's identity, what happened
//! (`event`), the last check and an error if the round failed. Any web server
//! that logs POSTs serves. A report that cannot be sent is logged and dropped:
//! it never delays or blocks an update.

use std::time::Duration;

use serde::Serialize;

use crate::daemon::DaemonOptions;
use crate::fleet::CheckReport;
use crate::status::{self, Status};
use crate::system::System;

/// How long one report may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// What a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// Checked: nothing newer.
    UpToDate,
    /// Checked while this boot is on trial.
    OnTrial,
    /// The init assessed this boot (the status says how).
    Assessed,
    /// An update was installed (or waits for its reboot).
    Installed,
    /// The round failed.
    Error,
}

/// The report's JSON.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The device's identity: the provisioning file's, else its host name.
    pub device: Option<&'a str>,
    pub event: Event,
    /// Seconds since the epoch, by the device's clock.
    pub at: u64,
    pub status: Option<Status>,
    pub check: Option<&'a CheckReport>,
    pub error: Option<&'a str>,
}

/// Sends a report if the daemon has a report URL; failures are only logged.
pub fn send(
    options: &DaemonOptions,
    event: Event,
    check: Option<&CheckReport>,
    error: Option<&str>,
) {
    let Some(url) = &options.report else {
        return;
    };
    let status = System::discover()
        .ok()
        .and_then(|system| status::status(&system).ok());
    let report = Report {
        device: options.device.as_deref(),
        event,
        at: berth_format::state::now(),
        status,
        check,
        error,
    };
    let body = serde_json::to_string(&report).expect("a report always serializes");
    let agent = match crate::source::http_agent_trusting(std::path::Path::new(
        berth_format::layout::UPDATE_CA_PATH,
    )) {
        Ok(builder) => builder.timeout(TIMEOUT).build(),
        Err(err) => {
            println!("report to {url} not sent: {err}");
            return;
        }
    };
    if let Err(err) = agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(&body)
    {
        println!("report to {url} not sent: {}", crate::source::describe(err));
    }
}
