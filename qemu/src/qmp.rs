//! A small QMP client: one JSON object per line over QEMU's unix socket.
//!
//! Session: QEMU greets (`{"QMP": …}`), the client sends `qmp_capabilities`, then
//! each command gets either `{"return": …}` or `{"error": {"class", "desc"}}`;
//! asynchronous `{"event": …}` messages may come in between and are kept.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a command may take to be answered.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Failure talking to QEMU over QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to in time.
    #[error("connecting to the QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("talking to QEMU over the QMP socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// QEMU did not answer in time.
    #[error("QEMU did not answer {command:?} within {} s on the QMP socket {path}", REPLY_TIMEOUT.as_secs())]
    Timeout { path: PathBuf, command: String },
    /// QEMU closed the socket.
    #[error("QEMU closed the QMP socket {path} while waiting for {waiting_for}")]
    Closed { path: PathBuf, waiting_for: String },
    /// A line that is not a JSON object.
    #[error("malformed QMP message on {path}: {line:?}: {reason}")]
    Malformed {
        path: PathBuf,
        line: String,
        reason: String,
    },
    /// The first message was not a greeting.
    #[error("QMP socket {path} did not greet with {{\"QMP\": …}} but sent {message}")]
    NoGreeting { path: PathBuf, message: String },
    /// QEMU refused a command.
    #[error("QEMU refused {command:?} on the QMP socket {path}: {class}: {desc}")]
    Refused {
        path: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
}

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path`, retrying while the socket does not exist or refuses for
    /// up to `timeout` (QEMU creates it shortly after starting), then negotiates.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_while(path, timeout, || true)
    }

    /// As [`Qmp::connect`], but gives up early once `keep_trying` says so (for
    /// instance because QEMU exited).
    pub fn connect_while(
        path: &Path,
        timeout: Duration,
        mut keep_trying: impl FnMut() -> bool,
    ) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::NotFound | ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline
                        && keep_trying() =>
                {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        Qmp::handshake(stream, path)
    }

    /// Reads the greeting and enters command mode on a connected stream.
    pub fn handshake(stream: UnixStream, path: &Path) -> Result<Qmp, QmpError> {
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message("the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NoGreeting {
                path: qmp.path.clone(),
                message: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs one command; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut message = json!({ "execute": command });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let mut reply = self.read_message(command)?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Refused {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Malformed {
                path: self.path.clone(),
                line: reply.to_string(),
                reason: "neither \"return\", \"error\" nor \"event\"".into(),
            });
        }
    }

    /// Asks the guest to power off (ACPI power button).
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Resets the machine, like the reset button.
    pub fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).map(drop)
    }

    /// Ends QEMU at once. QEMU may close the socket before or after answering;
    /// both count as done.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Events received so far while waiting for replies, oldest first.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    fn read_message(&mut self, waiting_for: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.reader.read_line(&mut line).map_err(|source| {
                if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    QmpError::Timeout {
                        path: self.path.clone(),
                        command: waiting_for.to_string(),
                    }
                } else {
                    QmpError::Io {
                        path: self.path.clone(),
                        source,
                    }
                }
            })?;
            if read == 0 {
                return Err(QmpError::Closed {
                    path: self.path.clone(),
                    waiting_for: waiting_for.to_string(),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line.trim()).map_err(|err| QmpError::Malformed {
                    path: self.path.clone(),
                    line: line.trim().to_string(),
                    reason: err.to_string(),
                })?;
            if !value.is_object() {
                return Err(QmpError::Malformed {
                    path: self.path.clone(),
                    line: line.trim().to_string(),
                    reason: "not a JSON object".into(),
                });
            }
            return Ok(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::os::unix::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: greets, then answers each command with the scripted lines and
    /// records what it received.
    fn fake_peer(
        dir: &Path,
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> (PathBuf, thread::JoinHandle<Vec<Value>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut writer = stream.try_clone().expect("clone");
            let mut reader = BufReader::new(stream);
            // Greeting written in two pieces: framing must not depend on packets.
            writer.write_all(&GREETING.as_bytes()[..10]).expect("write");
            writer.flush().expect("flush");
            thread::sleep(Duration::from_millis(20));
            writer.write_all(&GREETING.as_bytes()[10..]).expect("write");
            writer.write_all(b"\r\n").expect("write");
            let mut received = Vec::new();
            for (expected, replies) in script {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 {
                    break;
                }
                let value: Value = serde_json::from_str(&line).expect("client sent JSON");
                assert_eq!(value["execute"], expected, "{line}");
                assert!(line.ends_with('\n'));
                received.push(value);
                for reply in replies {
                    writer.write_all(reply.as_bytes()).expect("write");
                    writer.write_all(b"\n").expect("write");
                }
            }
            received
        });
        (path, handle)
    }

    #[test]
    fn negotiates_and_runs_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, peer) = fake_peer(
            dir.path(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}}"#]),
                (
                    "system_powerdown",
                    vec![
                        r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#,
                        r#"{"return": {}}"#,
                    ],
                ),
                (
                    "query-status",
                    vec![r#"{"return": {"status": "running", "running": true}}"#],
                ),
                ("quit", vec![]),
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).expect("connect");
        qmp.system_powerdown().expect("powerdown");
        assert_eq!(qmp.events().len(), 1);
        assert_eq!(qmp.events()[0]["event"], "POWERDOWN");
        let status = qmp.execute("query-status", None).expect("status");
        assert_eq!(status["status"], "running");
        // The peer closes without answering quit: still a success.
        qmp.quit().expect("quit");
        let received = peer.join().expect("peer");
        assert_eq!(received.len(), 4);
        assert!(received[1].get("arguments").is_none());
    }

    #[test]
    fn reports_refusals_with_class_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, peer) = fake_peer(
            dir.path(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}}"#]),
                (
                    "system_wakeup",
                    vec![
                        r#"{"error": {"class": "GenericError", "desc": "wake-up from suspend is not supported"}}"#,
                    ],
                ),
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).expect("connect");
        let err = qmp.execute("system_wakeup", None).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("GenericError"), "{text}");
        assert!(text.contains("qmp.sock"), "{text}");
        peer.join().expect("peer");
    }

    #[test]
    fn sends_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, peer) = fake_peer(
            dir.path(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}}"#]),
                ("human-monitor-command", vec![r#"{"return": "ok\r\n"}"#]),
            ],
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(10)).expect("connect");
        let out = qmp
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": "info status"})),
            )
            .expect("hmp");
        assert_eq!(out, "ok\r\n");
        let received = peer.join().expect("peer");
        assert_eq!(received[1]["arguments"]["command-line"], "info status");
    }

    #[test]
    fn rejects_a_peer_that_does_not_greet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let peer = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.write_all(b"{\"hello\": 1}\n").expect("write");
        });
        let err = Qmp::connect(&path, Duration::from_secs(10)).expect_err("no greeting");
        assert!(matches!(err, QmpError::NoGreeting { .. }), "{err}");
        peer.join().expect("peer");
    }

    #[test]
    fn connect_gives_up_on_a_missing_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.sock");
        let err = Qmp::connect(&path, Duration::from_millis(100)).expect_err("missing");
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
