//! The provisioning file's `[env]` in every container's process environment.
//!
//! A bundle's `config.json` is on the read-only root, so the init makes a
//! bundle of its own at boot, `/run/berth/bundles/<name>/config.json`: the
//! original with the merged environment and `root.path` made absolute (the
//! root stays the image's `/usr/lib/berth/containers/<name>/rootfs`). The
//! container is started from that bundle, so `crun exec` (health checks, the
//! debug shell), which reads `config.json` from the container's bundle, gets
//! the same environment as the container's process.
//!
//! Provisioning is device-specific configuration, so it wins over the bundle's
//! environment (the image's and the recipe's) for the same name: each override
//! is logged once per boot. Only `process.env` and `root.path` are touched,
//! found by a small JSON scanner (the init carries no JSON library for two
//! fields); the rest of the file is copied byte for byte.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_format::layout;

/// Where the bundles with the merged configurations are made.
pub const BUNDLES_DIR: &str = "/run/berth/bundles";

/// Why a container's configuration could not get the provisioned environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The image's configuration could not be read, or the new bundle made.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration is not JSON with a `process` object and a
    /// `root.path`.
    #[error("{path}: {reason} at byte {at}")]
    Json {
        path: PathBuf,
        reason: &'static str,
        at: usize,
    },
}

/// Merges `extra` into an OCI `process.env` list (`NAME=value` entries):
/// an entry whose name is in `extra` gets the provisioned value in place,
/// names not there are appended (in name order). Returns the list and the
/// names that were overridden.
pub fn merge(base: &[String], extra: &BTreeMap<String, String>) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::with_capacity(base.len() + extra.len());
    let mut overridden = Vec::new();
    for entry in base {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        match extra.get(name) {
            Some(value) => {
                if !overridden.iter().any(|o| o == name) {
                    overridden.push(name.to_string());
                    out.push(format!("{name}={value}"));
                }
            }
            None => out.push(entry.clone()),
        }
    }
    for (name, value) in extra {
        if !overridden.iter().any(|o| o == name) {
            out.push(format!("{name}={value}"));
        }
    }
    (out, overridden)
}

/// A JSON syntax problem: what and where.
type Syntax = (&'static str, usize);

/// `config.json` with its `process.env` merged with `extra` and a relative
/// `root.path` made absolute under `bundle` (the original bundle folder), and
/// the names that were overridden.
pub fn rewrite(
    json: &str,
    extra: &BTreeMap<String, String>,
    bundle: &Path,
) -> Result<(String, Vec<String>), Syntax> {
    let spots = find_spots(json.as_bytes())?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let overridden = match spots.env {
        EnvSpot::List { range, entries } => {
            let (env, overridden) = merge(&entries, extra);
            edits.push((range, render(&env)));
            overridden
        }
        EnvSpot::Missing { after_brace, empty } => {
            let (env, _) = merge(&[], extra);
            let sep = if empty { "" } else { "," };
            let text = format!("\"env\":{}{sep}", render(&env));
            edits.push((after_brace..after_brace, text));
            Vec::new()
        }
    };
    let (range, path) = spots.root_path;
    if !path.starts_with('/') {
        let absolute = bundle.join(&path).display().to_string();
        edits.push((range, quote(&absolute)));
    }
    // From the end, so the earlier ranges stay valid.
    edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
    let mut out = json.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    Ok((out, overridden))
}

/// A JSON array of strings.
fn render(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|item| quote(item)).collect();
    format!("[{}]", items.join(","))
}

/// A JSON string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

enum EnvSpot {
    /// `process.env` is the array at `range` (brackets included).
    List {
        range: Range<usize>,
        entries: Vec<String>,
    },
    /// `process` has no `env`: insert at `after_brace` (`empty`: no other key).
    Missing { after_brace: usize, empty: bool },
}

/// Where the two edited values are.
struct Spots {
    env: EnvSpot,
    /// The range of `root.path`'s string (quotes included) and its value.
    root_path: (Range<usize>, String),
}

fn find_spots(bytes: &[u8]) -> Result<Spots, Syntax> {
    let mut s = Scanner { bytes, pos: 0 };
    let mut env = None;
    let mut root_path = None;
    s.object(|s, key| match key {
        "process" => {
            env = Some(process_env(s)?);
            Ok(())
        }
        "root" => s.object(|s, key| {
            if key != "path" {
                return s.skip_value();
            }
            s.ws();
            let start = s.pos;
            let path = s.string()?;
            root_path = Some((start..s.pos, path));
            Ok(())
        }),
        _ => s.skip_value(),
    })?;
    Ok(Spots {
        env: env.ok_or(("no process object", 0))?,
        root_path: root_path.ok_or(("no root.path", 0))?,
    })
}

/// Finds `env` in the `process` object at the scanner.
fn process_env(s: &mut Scanner<'_>) -> Result<EnvSpot, Syntax> {
    s.ws();
    let after_brace = s.pos + 1;
    let mut keys = 0;
    let mut spot = None;
    s.object(|s, key| {
        keys += 1;
        if key != "env" {
            return s.skip_value();
        }
        s.ws();
        let start = s.pos;
        let mut entries = Vec::new();
        s.array(|s| {
            entries.push(s.string()?);
            Ok(())
        })?;
        spot = Some(EnvSpot::List {
            range: start..s.pos,
            entries: std::mem::take(&mut entries),
        });
        Ok(())
    })?;
    Ok(spot.unwrap_or(EnvSpot::Missing {
        after_brace,
        empty: keys == 0,
    }))
}

/// Just enough JSON to find one value: strings are decoded, everything else
/// is skipped over.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8, reason: &'static str) -> Result<(), Syntax> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err((reason, self.pos))
        }
    }

    /// `{ "key": value, … }`, calling `each` with the scanner before each value.
    fn object(
        &mut self,
        mut each: impl FnMut(&mut Self, &str) -> Result<(), Syntax>,
    ) -> Result<(), Syntax> {
        self.eat(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':', "expected ':'")?;
            each(self, &key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(("expected ',' or '}'", self.pos)),
            }
        }
    }

    /// `[ value, … ]`, calling `each` before each value.
    fn array(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<(), Syntax>,
    ) -> Result<(), Syntax> {
        self.eat(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            each(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(("expected ',' or ']'", self.pos)),
            }
        }
    }

    fn string(&mut self) -> Result<String, Syntax> {
        self.eat(b'"', "expected a string")?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(("unterminated string", self.pos));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.pos) else {
                        return Err(("unterminated string", self.pos));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(("bad escape", self.pos)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| ("string is not UTF-8", self.pos))
    }

    /// The four hex digits after `\u` (and a low surrogate's after a high one).
    fn unicode_escape(&mut self) -> Result<char, Syntax> {
        let high = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&high) {
            if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(("lone surrogate", self.pos));
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xdc00..0xe000).contains(&low) {
                return Err(("lone surrogate", self.pos));
            }
            0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
        } else {
            high
        };
        char::from_u32(code).ok_or(("bad \\u escape", self.pos))
    }

    fn hex4(&mut self) -> Result<u32, Syntax> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or(("bad \\u escape", self.pos))?;
        self.pos += 4;
        Ok(digits)
    }

    fn skip_value(&mut self) -> Result<(), Syntax> {
        match self.peek() {
            Some(b'{') => self.object(|s, _| s.skip_value()),
            Some(b'[') => self.array(Self::skip_value),
            Some(b'"') => self.string().map(drop),
            Some(_) => {
                // A number, true, false or null: up to the next delimiter.
                let start = self.pos;
                while self
                    .bytes
                    .get(self.pos)
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    Err(("expected a value", self.pos))
                } else {
                    Ok(())
                }
            }
            None => Err(("unexpected end", self.pos)),
        }
    }
}

/// The bundle folder of container `name`: the one [`prepare`] made, else
/// the image's.
pub fn bundle(name: &str) -> PathBuf {
    let made = Path::new(BUNDLES_DIR).join(name);
    if made.join("config.json").exists() {
        made
    } else {
        Path::new(layout::CONTAINERS_DIR).join(name)
    }
}

/// Makes the bundle with the merged configuration of every container (nothing
/// when `extra` is empty) and logs each override; a container whose bundle
/// fails keeps the image's, and the failure is logged.
pub fn prepare(names: &[&str], extra: &BTreeMap<String, String>) {
    if extra.is_empty() {
        return;
    }
    for name in names {
        let image_bundle = Path::new(layout::CONTAINERS_DIR).join(name);
        let made = Path::new(BUNDLES_DIR).join(name);
        match prepare_one(&image_bundle, &made, extra) {
            Ok(overridden) => {
                for var in overridden {
                    log!("container {name}: provisioned {var} overrides the image's value");
                }
            }
            Err(err) => log!("container {name}: provisioned environment not applied: {err}"),
        }
    }
}

/// Writes `<to>/config.json` from `<from>/config.json`.
fn prepare_one(
    from: &Path,
    to: &Path,
    extra: &BTreeMap<String, String>,
) -> Result<Vec<String>, EnvError> {
    let source = from.join("config.json");
    let json = std::fs::read_to_string(&source).map_err(|source_err| EnvError::Io {
        what: "reading",
        path: source.clone(),
        source: source_err,
    })?;
    let (merged, overridden) =
        rewrite(&json, extra, from).map_err(|(reason, at)| EnvError::Json {
            path: source.clone(),
            reason,
            at,
        })?;
    std::fs::create_dir_all(to).map_err(|source| EnvError::Io {
        what: "creating",
        path: to.to_path_buf(),
        source,
    })?;
    let target = to.join("config.json");
    std::fs::write(&target, merged).map_err(|source| EnvError::Io {
        what: "writing",
        path: target,
        source,
    })?;
    Ok(overridden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn provisioned_values_win_in_place_and_new_ones_are_appended() {
        let base = strings(&["PATH=/bin", "SITE=recipe", "TERM=xterm", "SITE=dup"]);
        let (env, overridden) = merge(&base, &extra(&[("SITE", "north"), ("ZONE", "a b")]));
        assert_eq!(
            env,
            strings(&["PATH=/bin", "SITE=north", "TERM=xterm", "ZONE=a b"])
        );
        assert_eq!(overridden, strings(&["SITE"]));
        let (env, overridden) = merge(&base, &BTreeMap::new());
        assert_eq!(env, base);
        assert!(overridden.is_empty());
    }

    const CONFIG: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": ["/bin/sh", "-c", "echo \"}]\" $SITE"],
    "env": [
      "PATH=/usr/bin:/bin",
      "SITE=recipe",
      "QUOTE=a\"b\\c\u00e9"
    ],
    "cwd": "/"
  },
  "root": { "path": "rootfs", "readonly": true },
  "mounts": [{"destination": "/proc", "options": [], "type": "proc"}]
}"#;

    #[test]
    fn rewrites_only_process_env_and_the_root_path() {
        let bundle = Path::new("/usr/lib/berth/containers/web");
        let (out, overridden) = rewrite(
            CONFIG,
            &extra(&[("SITE", "north"), ("NEW", "x\"y\n")]),
            bundle,
        )
        .unwrap();
        assert_eq!(overridden, strings(&["SITE"]));
        let expected = CONFIG
            .replace(
                r#""env": [
      "PATH=/usr/bin:/bin",
      "SITE=recipe",
      "QUOTE=a\"b\\c\u00e9"
    ]"#,
                r#""env": ["PATH=/usr/bin:/bin","SITE=north","QUOTE=a\"b\\cé","NEW=x\"y\u000a"]"#,
            )
            .replace(
                r#""path": "rootfs""#,
                r#""path": "/usr/lib/berth/containers/web/rootfs""#,
            );
        assert_ne!(expected, CONFIG);
        assert_eq!(out, expected);
        // What was written reads back as the merged list.
        let spots = find_spots(out.as_bytes()).unwrap();
        let EnvSpot::List { entries, .. } = spots.env else {
            panic!("no env in {out}");
        };
        assert_eq!(
            entries,
            strings(&[
                "PATH=/usr/bin:/bin",
                "SITE=north",
                "QUOTE=a\"b\\cé",
                "NEW=x\"y\n"
            ])
        );
        assert_eq!(spots.root_path.1, "/usr/lib/berth/containers/web/rootfs");
        // An absolute root path stays.
        let (again, _) = rewrite(&out, &extra(&[("SITE", "south")]), Path::new("/x")).unwrap();
        assert!(again.contains(r#""path": "/usr/lib/berth/containers/web/rootfs""#));
    }

    #[test]
    fn adds_env_when_the_process_has_none() {
        let root = r#""root": {"path": "/r"}"#;
        let e = extra(&[("A", "1")]);
        let (out, _) = rewrite(
            &format!(r#"{{"process": {{"cwd": "/"}}, {root}}}"#),
            &e,
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(
            out,
            format!(r#"{{"process": {{"env":["A=1"],"cwd": "/"}}, {root}}}"#)
        );
        let (out, _) = rewrite(
            &format!(r#"{{"process": {{}}, {root}}}"#),
            &e,
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(out, format!(r#"{{"process": {{"env":["A=1"]}}, {root}}}"#));
    }

    #[test]
    fn refuses_what_is_not_a_runtime_configuration() {
        let e = extra(&[("A", "1")]);
        let b = Path::new("/b");
        assert!(rewrite("", &e, b).is_err());
        assert!(rewrite(r#"{"root": {"path": "r"}}"#, &e, b).is_err());
        assert!(rewrite(r#"{"process": {}}"#, &e, b).is_err());
        assert!(rewrite(
            r#"{"process": {"env": ["A=1", 2]}, "root": {"path": "r"}}"#,
            &e,
            b
        )
        .is_err());
        assert!(rewrite(r#"{"process": {"env": ["unterminated]}}"#, &e, b).is_err());
    }

    #[test]
    fn makes_a_bundle_with_the_merged_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("image/web");
        let to = dir.path().join("run/web");
        assert!(matches!(
            prepare_one(&from, &to, &extra(&[("A", "1")])),
            Err(EnvError::Io {
                what: "reading",
                ..
            })
        ));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::write(from.join("config.json"), CONFIG).unwrap();
        assert_eq!(
            prepare_one(&from, &to, &extra(&[("SITE", "n")])).unwrap(),
            strings(&["SITE"])
        );
        let made = std::fs::read_to_string(to.join("config.json")).unwrap();
        assert!(made.contains("\"SITE=n\""), "{made}");
        assert!(
            made.contains(&format!("\"path\": \"{}/rootfs\"", from.display())),
            "{made}"
        );
    }
}
