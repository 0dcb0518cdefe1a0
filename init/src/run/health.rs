//! Health checks: the per-container state machine (pure, time passed in) and the
//! probes themselves. An exec probe is a `crun exec` child the event loop reaps
//! like any other; http and tcp probes run in a short-lived thread each, with
//! their own timeouts, and hand their result back through a channel plus one byte
//! on a pipe the event loop polls. Nothing here blocks PID 1's loop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_format::{layout, HealthCheck, HealthProbe};
use nix::fcntl::OFlag;

/// The first check of a started container runs after this (or after the check
/// interval, if that is shorter), not a whole interval later: the boot assessment
/// waits for it.
pub const FIRST_CHECK_AFTER: Duration = Duration::from_secs(1);
/// Most bytes of an HTTP response read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// What a container's health is, as far as its checks tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Started, no check passed yet (and not yet failed `retries` times in a row).
    Starting,
    Healthy,
    Unhealthy,
}

/// A change worth a console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    /// `retries` consecutive failures past the start period: restart it.
    BecameUnhealthy(String),
}

/// The health of one container with a health check.
#[derive(Debug, Clone)]
pub struct Health {
    pub check: HealthCheck,
    pub status: Status,
    /// Consecutive failures that counted.
    failures: u32,
    /// When the container's current run started; `None` while it is not running.
    started: Option<Instant>,
    /// When the next check is due (while running and no check is in flight).
    next: Option<Instant>,
    /// A check runs now.
    in_flight: bool,
    /// Why the last check failed, for the log and the boot assessment.
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(check: HealthCheck) -> Health {
        Health {
            check,
            status: Status::Starting,
            failures: 0,
            started: None,
            next: None,
            in_flight: false,
            last_error: None,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.check.interval_ms)
    }

    /// How long one check may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.check.timeout_ms)
    }

    /// The container (re)started at `now`: checks begin again from scratch.
    pub fn started(&mut self, now: Instant) {
        self.status = Status::Starting;
        self.failures = 0;
        self.started = Some(now);
        self.in_flight = false;
        self.next = Some(now + self.interval().min(FIRST_CHECK_AFTER));
    }

    /// The container stopped: no checks until it starts again.
    pub fn stopped(&mut self) {
        self.status = Status::Starting;
        self.failures = 0;
        self.started = None;
        self.next = None;
        self.in_flight = false;
    }

    /// Whether a check is to be started now.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.in_flight && self.next.is_some_and(|next| next <= now)
    }

    /// When the next check is due, for the event loop's timeout.
    pub fn next_due(&self) -> Option<Instant> {
        if self.in_flight {
            None
        } else {
            self.next
        }
    }

    /// A check was started.
    pub fn check_started(&mut self) {
        self.in_flight = true;
        self.next = None;
    }

    /// A check ended at `now` with `result`; the next one is due an interval later.
    pub fn check_ended(&mut self, now: Instant, result: Result<(), String>) -> Option<Transition> {
        let started = self.started?;
        self.in_flight = false;
        self.next = Some(now + self.interval());
        match result {
            Ok(()) => {
                self.failures = 0;
                self.last_error = None;
                if self.status == Status::Healthy {
                    return None;
                }
                self.status = Status::Healthy;
                Some(Transition::BecameHealthy)
            }
            Err(reason) => {
                self.last_error = Some(reason.clone());
                let in_start_period = now.saturating_duration_since(started)
                    < Duration::from_millis(self.check.start_period_ms);
                // Failures during the start period do not count, until the first
                // check passed (then the container is up and a failure is real).
                if in_start_period && self.status != Status::Healthy {
                    return None;
                }
                self.failures = self.failures.saturating_add(1);
                if self.failures < self.check.retries || self.status == Status::Unhealthy {
                    return None;
                }
                self.status = Status::Unhealthy;
                Some(Transition::BecameUnhealthy(format!(
                    "{reason} ({} failed checks in a row)",
                    self.failures
                )))
            }
        }
    }
}

/// The result of one probe, identified by container and by the run it checked.
#[derive(Debug)]
pub struct ProbeResult {
    pub index: usize,
    /// The container's start count when the probe began: a result for an earlier
    /// run is dropped.
    pub run: u64,
    pub result: Result<(), String>,
}

/// An exec probe in flight: a `crun exec` child of PID 1.
#[derive(Debug, Clone, Copy)]
pub struct ExecProbe {
    pub pid: i32,
    pub index: usize,
    pub run: u64,
    pub deadline: Instant,
    /// Killed for taking too long.
    pub timed_out: bool,
}

/// Where network probes' results come back: a channel, and a pipe whose read end
/// the event loop polls (each result writes one byte).
#[derive(Debug)]
pub struct Probes {
    sender: Sender<ProbeResult>,
    receiver: Receiver<ProbeResult>,
    wake_read: OwnedFd,
    wake_write: Arc<Mutex<std::fs::File>>,
    pub exec: Vec<ExecProbe>,
}

impl Probes {
    pub fn new() -> Result<Probes, nix::errno::Errno> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let (sender, receiver) = mpsc::channel();
        Ok(Probes {
            sender,
            receiver,
            wake_read: read,
            wake_write: Arc::new(Mutex::new(std::fs::File::from(write))),
            exec: Vec::new(),
        })
    }

    /// The descriptor to poll for finished network probes.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }

    /// Results of network probes that finished; empties the wake-up pipe.
    pub fn finished(&self) -> Vec<ProbeResult> {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake_read, &mut buf), Ok(n) if n > 0) {}
        self.receiver.try_iter().collect()
    }

    /// Starts the probe of container `index` (`name`, run `run`). Exec probes are
    /// children the caller reaps; network probes run in a thread.
    pub fn start(
        &mut self,
        index: usize,
        name: &str,
        run: u64,
        health: &Health,
        now: Instant,
    ) -> Result<(), String> {
        let timeout = health.timeout();
        match &health.check.probe {
            HealthProbe::Exec { argv } => {
                let pid = spawn_exec(name, argv).map_err(|err| format!("crun exec: {err}"))?;
                self.exec.push(ExecProbe {
                    pid,
                    index,
                    run,
                    deadline: now + timeout,
                    timed_out: false,
                });
                Ok(())
            }
            HealthProbe::Http { port, path } => {
                let (port, path) = (*port, path.clone());
                self.spawn_network(index, run, move || http_check(port, &path, timeout))
            }
            HealthProbe::Tcp { port } => {
                let port = *port;
                self.spawn_network(index, run, move || tcp_check(port, timeout))
            }
        }
    }

    fn spawn_network(
        &self,
        index: usize,
        run: u64,
        probe: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let sender = self.sender.clone();
        let wake = Arc::clone(&self.wake_write);
        std::thread::Builder::new()
            .name("health".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = probe();
                let _ = sender.send(ProbeResult { index, run, result });
                if let Ok(mut pipe) = wake.lock() {
                    let _ = pipe.write(&[1]);
                }
            })
            .map(|_| ())
            .map_err(|err| format!("starting the check: {err}"))
    }

    /// The exec probe that is process `pid`, removed from the list.
    pub fn take_exec(&mut self, pid: i32) -> Option<ExecProbe> {
        let position = self.exec.iter().position(|probe| probe.pid == pid)?;
        Some(self.exec.remove(position))
    }

    /// The earliest exec probe deadline, for the event loop's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.exec
            .iter()
            .filter(|probe| !probe.timed_out)
            .map(|probe| probe.deadline)
            .min()
    }
}

/// `crun exec <name> <argv…>` with no input and no output.
fn spawn_exec(name: &str, argv: &[String]) -> std::io::Result<i32> {
    let child = super::unblock_signals(&mut Command::new(layout::CRUN_PATH))
        .arg("exec")
        .arg(name)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Not waited for here: the event loop reaps it by pid.
    i32::try_from(child.id()).map_err(std::io::Error::other)
}

/// Connects to `127.0.0.1:port` within `timeout`.
pub fn tcp_check(port: u16, timeout: Duration) -> Result<(), String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, timeout)
        .map(|_| ())
        .map_err(|err| format!("tcp 127.0.0.1:{port}: {err}"))
}

/// `GET path` on `127.0.0.1:port`; a 2xx or 3xx status passes. The whole exchange
/// gets `timeout`.
pub fn http_check(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{port}{path}");
    let fail = |what: String| format!("{url}: {what}");
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| fail(e.to_string()))?;
    let left = || {
        timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.set_read_timeout(Some(left())))
        .map_err(|e| fail(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: berth-init\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        if start.elapsed() >= timeout {
            return Err(fail("timed out".into()));
        }
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| fail(e.to_string()))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let status = parse_status_line(&head).map_err(fail)?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(fail(format!("status {status}")))
    }
}

/// The status code of an HTTP response's first line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| "no complete status line in the response".to_string())?;
    let line = String::from_utf8_lossy(&head[..end]);
    let line = line.trim_end_matches('\r');
    let mut words = line.split(' ');
    let version = words.next().unwrap_or_default();
    let code = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(format!("not an HTTP response: {line:?}"));
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("not an HTTP status: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            probe: HealthProbe::Tcp { port: 80 },
            interval_ms: 5000,
            timeout_ms: 3000,
            retries,
            start_period_ms,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_check_soon_then_every_interval() {
        let t0 = Instant::now();
        let mut health = Health::new(check(3, 0));
        assert!(!health.is_due(t0 + s(100)), "not running: no checks");
        health.started(t0);
        assert_eq!(health.next_due(), Some(t0 + FIRST_CHECK_AFTER));
        assert!(health.is_due(t0 + s(1)));
        health.check_started();
        assert!(!health.is_due(t0 + s(100)), "one check at a time");
        assert_eq!(
            health.check_ended(t0 + s(2), Ok(())),
            Some(Transition::BecameHealthy)
        );
        assert_eq!(health.next_due(), Some(t0 + s(7)));
        health.check_started();
        assert_eq!(health.check_ended(t0 + s(7), Ok(())), None, "no repeats");
    }

    #[test]
    fn consecutive_failures_make_it_unhealthy_once() {
        let t0 = Instant::now();
        let mut health = Health::new(check(3, 0));
        health.started(t0);
        let fail = || Err("connection refused".to_string());
        assert_eq!(health.check_ended(t0 + s(1), fail()), None);
        assert_eq!(health.check_ended(t0 + s(6), fail()), None);
        // A pass in between starts the count over.
        assert_eq!(
            health.check_ended(t0 + s(11), Ok(())),
            Some(Transition::BecameHealthy)
        );
        assert_eq!(health.check_ended(t0 + s(16), fail()), None);
        assert_eq!(health.check_ended(t0 + s(21), fail()), None);
        assert_eq!(
            health.check_ended(t0 + s(26), fail()),
            Some(Transition::BecameUnhealthy(
                "connection refused (3 failed checks in a row)".into()
            ))
        );
        assert_eq!(health.status, Status::Unhealthy);
        assert_eq!(health.check_ended(t0 + s(31), fail()), None, "said once");
        assert_eq!(health.last_error.as_deref(), Some("connection refused"));
        // A restart starts from scratch.
        health.stopped();
        assert_eq!(health.next_due(), None);
        health.started(t0 + s(40));
        assert_eq!(health.status, Status::Starting);
        assert_eq!(health.check_ended(t0 + s(41), fail()), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut health = Health::new(check(1, 10_000));
        health.started(t0);
        let fail = || Err("refused".to_string());
        assert_eq!(health.check_ended(t0 + s(1), fail()), None);
        assert_eq!(health.check_ended(t0 + s(9), fail()), None);
        assert_eq!(health.status, Status::Starting);
        assert!(matches!(
            health.check_ended(t0 + s(10), fail()),
            Some(Transition::BecameUnhealthy(_))
        ));
        // Once healthy, a failure counts even inside the start period.
        health.started(t0 + s(20));
        assert_eq!(
            health.check_ended(t0 + s(21), Ok(())),
            Some(Transition::BecameHealthy)
        );
        assert!(matches!(
            health.check_ended(t0 + s(22), fail()),
            Some(Transition::BecameUnhealthy(_))
        ));
    }

    #[test]
    fn a_result_for_a_stopped_container_is_ignored() {
        let t0 = Instant::now();
        let mut health = Health::new(check(1, 0));
        health.started(t0);
        health.check_started();
        health.stopped();
        assert_eq!(health.check_ended(t0 + s(1), Err("x".into())), None);
        assert_eq!(health.next_due(), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"),
            Ok(302)
        );
        assert_eq!(parse_status_line(b"HTTP/1.0 404\n"), Ok(404));
        assert!(parse_status_line(b"HTTP/1.1 200 OK").is_err(), "incomplete");
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc OK\r\n").is_err());
    }

    fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(response.as_bytes());
        });
        port
    }

    #[test]
    fn http_and_tcp_checks_against_a_local_server() {
        let port = serve_once("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(http_check(port, "/", s(3)), Ok(()));
        let port = serve_once("HTTP/1.0 503 Service Unavailable\r\n\r\n");
        let err = http_check(port, "/health", s(3)).unwrap_err();
        assert!(err.contains("/health: status 503"), "{err}");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(tcp_check(port, s(3)), Ok(()));
        drop(listener);
        let err = tcp_check(port, s(3)).unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
