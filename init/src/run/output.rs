//! Containers' output: bytes from a pipe, cut into lines, each printed on the
//! console as `[<name>] <line>`.

/// Longest line passed on in one piece; longer lines are cut at this length so a
/// container printing without newlines cannot make the init buffer without limit.
pub const MAX_LINE: usize = 4096;

/// Cuts a byte stream into lines. Bytes after the last newline wait for more input
/// (or for [`LineSplitter::finish`] at end of stream).
#[derive(Debug, Clone)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max` bytes (at least 1).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; `emit` receives each complete line without its newline (and
    /// without a `\r` before it).
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(&first) = data.first() {
            // A full line is cut only when more than its newline follows.
            if self.partial.len() >= self.max && first != b'\n' {
                emit(&self.partial);
                self.partial.clear();
            }
            let room = self.max - self.partial.len();
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.partial.extend_from_slice(&window[..newline]);
                    emit(strip_cr(&self.partial));
                    self.partial.clear();
                    data = &data[newline + 1..];
                }
                None => {
                    let take = data.len().min(room);
                    self.partial.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
            }
        }
    }

    /// End of stream: emits what is left after the last newline, if anything.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(strip_cr(&self.partial));
            self.partial.clear();
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One console line for a container: `[<name>] <line>\n`.
pub fn prefixed(name: &str, line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + line.len() + 4);
    out.push(b'[');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"] ");
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |line| {
                lines.push(String::from_utf8_lossy(line).into_owned())
            });
        }
        lines
    }

    #[test]
    fn splits_complete_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(split(&mut s, &[b"a\nbb\n\nccc\n"]), ["a", "bb", "", "ccc"]);
    }

    #[test]
    fn partial_lines_wait_for_the_rest() {
        let mut s = LineSplitter::default();
        assert_eq!(split(&mut s, &[b"hel", b"lo wo"]), Vec::<String>::new());
        assert_eq!(split(&mut s, &[b"rld\nnext"]), ["hello world"]);
        let mut rest = Vec::new();
        s.finish(|line| rest.push(line.to_vec()));
        assert_eq!(rest, [b"next".to_vec()]);
        // Nothing left twice.
        s.finish(|_| panic!("already flushed"));
    }

    #[test]
    fn crlf_is_one_line_end() {
        let mut s = LineSplitter::default();
        assert_eq!(split(&mut s, &[b"dos\r", b"\nline\r\n"]), ["dos", "line"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let mut s = LineSplitter::new(4);
        assert_eq!(split(&mut s, &[b"abcdefghij\nxy"]), ["abcd", "efgh", "ij"]);
        assert_eq!(split(&mut s, &[b"zw", b"v\n"]), ["xyzw", "v"]);
    }

    #[test]
    fn a_line_of_exactly_max_bytes_then_its_newline() {
        let mut s = LineSplitter::new(4);
        assert_eq!(split(&mut s, &[b"abcd", b"\n"]), ["abcd"]);
        assert_eq!(split(&mut s, &[b"abcd\n"]), ["abcd"]);
        assert_eq!(split(&mut s, &[b"abcd", b"e\n"]), ["abcd", "e"]);
    }

    #[test]
    fn default_cut_is_4_kib() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut lens = Vec::new();
        s.push(&long, |line| lens.push(line.len()));
        s.push(b"\n", |line| lens.push(line.len()));
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10]);
    }

    #[test]
    fn prefixes_with_the_container_name() {
        assert_eq!(prefixed("web", b"GET /"), b"[web] GET /\n".to_vec());
        assert_eq!(prefixed("a", b""), b"[a] \n".to_vec());
    }
}
