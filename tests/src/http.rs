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
/// and its subfolders;
/// stops when dropped.
#[derive(Debug)]
pub struct FileServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileServer {
    /// Serves `dir` on a free port.
    pub fn start(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|err| panic!("binding a file server: {err}"));
        let port = listener.local_addr().expect("bound address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let dir = dir.clone();
                        std::thread::spawn(move || serve_one(stream, &dir));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        FileServer { port, stop }
    }

    /// The URL of `name` as the guest sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_one(mut stream: TcpStream, dir: &Path) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("");
    let name = path.trim_start_matches('/');
    // Subfolders (an update repository's bundles/) but nothing that leaves `dir`.
    let safe = !name.is_empty()
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    let file = safe.then(|| File::open(dir.join(name)).ok()).flatten();
    match file {
        Some(mut file) => {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let _ = std::io::copy(&mut file, &mut stream);
        }
        None => {
            let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
