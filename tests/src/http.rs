//! Plain HTTP on loopback: a client that waits for a guest's forwarded port, and a
//! static file server the guests reach at 10.0.2.2.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to find a free port: {err}"));
    listener
        .local_addr()
        .unwrap_or_else(|err| panic!("reading the bound address: {err}"))
        .port()
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0, plain TCP), retried until a `200`
/// answer or `deadline`. Returns the whole response, headers included; the error
/// says what the last try saw.
pub fn http_get(port: u16, path: &str, deadline: Instant) -> Result<String, String> {
    loop {
        let last = match http_get_once(port, path) {
            Ok(response) if response.starts_with("HTTP/1.") && status_is_ok(&response) => {
                return Ok(response)
            }
            Ok(response) => format!(
                "answer: {:?}",
                response.lines().next().unwrap_or("(empty answer)")
            ),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "GET http://127.0.0.1:{port}{path} never answered 200; last try: {last}"
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn status_is_ok(response: &str) -> bool {
    response
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        == Some("200")
}

/// One plain `GET path` on `127.0.0.1:port` (HTTP/1.0): the whole response.
pub fn http_get_once(port: u16, path: &str) -> Result<String, String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| format!("set_read_timeout: {err}"))?;
    // One write: `write!` on an unbuffered stream sends each formatted
    // piece as its own segment, which a strict server may read piecemeal.
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("send: {err}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|err| format!("read: {err}"))?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// A static HTTP/1.0 file server on 127.0.0.1 (the guest reaches it at
/// 10.0.2.2 through QEMU's user networking), serving the files of one folder
/// and its subfolders. It keeps an access log (`GET /stable.json 200`) and the
/// bodies of POSTs (a device's status reports), answering them `204`; it can
/// stall one download on purpose ([`FileServer::trickle_next`]). Stops when
/// dropped.
#[derive(Debug)]
pub struct FileServer {
    pub port: u16,
    shared: std::sync::Arc<Shared>,
    /// Served over TLS (see [`FileServer::start_tls`]).
    tls: bool,
}

/// What the server's threads share.
#[derive(Debug, Default)]
struct Shared {
    stop: std::sync::atomic::AtomicBool,
    log: std::sync::Mutex<ServerLog>,
    /// The path suffix whose next GET is trickled.
    trickle: std::sync::Mutex<Option<String>>,
}

/// A trickled download: this much at full speed, then one byte every
/// [`TRICKLE_PAUSE`] for at most [`TRICKLE_FOR`] (or until the client leaves).
/// Less than the agent's stall guard wants in a minute (16 KiB), so a
/// trickled download fails in its first window.
pub const TRICKLE_HEAD: usize = 8 * 1024;
pub const TRICKLE_PAUSE: Duration = Duration::from_secs(5);
pub const TRICKLE_FOR: Duration = Duration::from_secs(900);

/// What a [`FileServer`] saw.
#[derive(Debug, Default, Clone)]
pub struct ServerLog {
    /// `METHOD PATH STATUS`, in order.
    pub requests: Vec<String>,
    /// `(path, body)` of each POST, in order.
    pub posts: Vec<(String, String)>,
}

impl FileServer {
    /// Serves `dir` on a free port.
    pub fn start(dir: &Path) -> FileServer {
        FileServer::serve(dir, None)
    }

    /// Serves `dir` over HTTPS with `certificate` (see [`crate::tls`]).
    pub fn start_tls(dir: &Path, certificate: &crate::tls::ServerCertificate) -> FileServer {
        FileServer::serve(dir, Some(certificate.config()))
    }

    fn serve(dir: &Path, tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("binding a file server: {err}"));
        let port = listener.local_addr().expect("bound address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let tls_on = tls.is_some();
        let shared = std::sync::Arc::new(Shared::default());
        let server = shared.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            while !server.stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let dir = dir.clone();
                        let shared = server.clone();
                        let tls = tls.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                            match tls {
                                None => serve_one(stream, &dir, &shared),
                                Some(config) => {
                                    let conn = rustls::ServerConnection::new(config)
                                        .unwrap_or_else(|e| panic!("a TLS connection: {e}"));
                                    let mut tls = rustls::StreamOwned::new(conn, stream);
                                    serve_one(&mut tls, &dir, &shared);
                                    tls.conn.send_close_notify();
                                    let _ = tls.flush();
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        FileServer {
            port,
            shared,
            tls: tls_on,
        }
    }

    /// What the server saw so far.
    pub fn log(&self) -> ServerLog {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stalls the next GET of a path ending in `suffix`: its headers and first
    /// [`TRICKLE_HEAD`] bytes go out, then one byte every [`TRICKLE_PAUSE`] (a
    /// network that hangs without closing). Later GETs are served whole.
    pub fn trickle_next(&self, suffix: &str) {
        *self
            .shared
            .trickle
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(suffix.to_string());
    }

    /// The URL of `name` as the guest sees it.
    pub fn guest_url(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://10.0.2.2:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_one(mut stream: impl Read + Write, dir: &Path, shared: &Shared) {
    let log = &shared.log;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() >= 16 * 1024 {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let mut body = head.split_off(end);
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let record = |status: u16| {
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.requests.push(format!("{method} {path} {status}"));
    };
    if method == "POST" {
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while body.len() < length {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        record(204);
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .posts
            .push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
        let _ = stream.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
        let _ = stream.flush();
        return;
    }
    let name = path.trim_start_matches('/');
    // Subfolders (an update repository's bundles/) but nothing that leaves `dir`.
    let safe = method == "GET"
        && !name.is_empty()
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    let file = safe.then(|| File::open(dir.join(name)).ok()).flatten();
    match file {
        Some(mut file) => {
            record(200);
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let trickled = {
                let mut rule = shared.trickle.lock().unwrap_or_else(|e| e.into_inner());
                let hit = rule.as_deref().is_some_and(|suffix| path.ends_with(suffix));
                if hit {
                    *rule = None;
                }
                hit
            };
            if trickled {
                trickle(&mut file, &mut stream, &shared.stop);
            } else {
                let _ = std::io::copy(&mut file, &mut stream);
            }
            let _ = stream.flush();
        }
        None => {
            record(404);
            let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.flush();
        }
    }
}

/// Sends [`TRICKLE_HEAD`] bytes of `file`, then one byte per [`TRICKLE_PAUSE`]
/// until the client goes, the server stops or [`TRICKLE_FOR`] has passed.
fn trickle(file: &mut File, stream: &mut impl Write, stop: &std::sync::atomic::AtomicBool) {
    let mut head = vec![0u8; TRICKLE_HEAD];
    let Ok(n) = file.read(&mut head) else { return };
    if stream
        .write_all(&head[..n])
        .and_then(|()| stream.flush())
        .is_err()
    {
        return;
    }
    let started = Instant::now();
    let mut byte = [0u8; 1];
    while started.elapsed() < TRICKLE_FOR && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(TRICKLE_PAUSE);
        if !matches!(file.read(&mut byte), Ok(1)) {
            return;
        }
        if stream
            .write_all(&byte)
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_server_logs_gets_and_keeps_posts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
        let server = FileServer::start(dir.path());
        let page = http_get_once(server.port, "/a.txt").unwrap();
        assert!(page.ends_with("hello"), "{page}");
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .write_all(b"POST /report HTTP/1.0\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 204"), "{answer}");
        let log = server.log();
        assert_eq!(log.requests, ["GET /a.txt 200", "POST /report 204"]);
        assert_eq!(
            log.posts,
            [("/report".to_string(), "{\"a\":1}".to_string())]
        );
    }

    #[test]
    fn a_trickled_download_stalls_once_and_the_next_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (b'a'..=b'z').cycle().take(TRICKLE_HEAD * 2).collect();
        std::fs::write(dir.path().join("big.bundle"), &content).unwrap();
        let server = FileServer::start(dir.path());
        server.trickle_next(".bundle");
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .write_all(b"GET /big.bundle HTTP/1.0\r\n\r\n")
            .unwrap();
        // Shorter than the pause between trickled bytes: the read times out.
        stream.set_read_timeout(Some(TRICKLE_PAUSE / 4)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let err = loop {
            match stream.read(&mut buf) {
                Ok(0) => panic!("the trickled download ended"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) => break err,
            }
        };
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        let body = got.split_off(got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
        assert_eq!(body, content[..TRICKLE_HEAD]);
        drop(stream);
        // The rule was used up: the next GET gets the whole file.
        let whole = http_get_once(server.port, "/big.bundle").unwrap();
        assert_eq!(
            whole.len() - whole.find("\r\n\r\n").unwrap() - 4,
            content.len()
        );
    }

    #[test]
    fn http_status_line() {
        assert!(status_is_ok("HTTP/1.1 200 OK\r\n\r\nbody"));
        assert!(!status_is_ok("HTTP/1.1 404 Not Found\r\n"));
        assert!(!status_is_ok(""));
    }

    #[test]
    fn http_get_reads_a_local_server() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            // Read the whole head: TCP may deliver it in several pieces.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "client closed before the end of its request");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /index.html HTTP/1.0\r\n"));
            stream
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nWelcome to berth")
                .expect("write");
        });
        let page = http_get(
            port,
            "/index.html",
            Instant::now() + Duration::from_secs(30),
        )
        .expect("page");
        assert!(page.ends_with("Welcome to berth"));
        server.join().expect("server");
    }
}
