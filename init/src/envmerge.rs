//! The provisioning file's `[env]` in every container's process environment.
//!
//! A bundle's `config.json` is on the read-only root, so the init writes a copy
//! with the merged environment to `/run/berth/config/<name>.json` at boot and
//! starts the container with `crun run --config <copy>` (crun resolves the
//! relative `root.path` against the bundle folder, which stays the same).
//!
//! Provisioning is device-specific configuration, so it wins over the bundle's
//! environment (the image's and the recipe's) for the same name: each override
//! is logged once per boot. Only `process.env` is touched; the rest of the
//! file is copied byte for byte, found by a small JSON scanner (the init does
//! not carry a JSON library for one field).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use berth_updater::layout;

/// Where the merged copies of the runtime configurations are written.
pub const CONFIG_DIR: &str = "/run/berth/config";

/// Why a container's configuration could not get the provisioned environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The bundle's configuration could not be read, or the copy written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration is not JSON with a `process` object.
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

/// `config.json` with its `process.env` merged with `extra`, and the names
/// that were overridden.
pub fn rewrite(
    json: &str,
    extra: &BTreeMap<String, String>,
) -> Result<(String, Vec<String>), Syntax> {
    let found = find_env(json.as_bytes())?;
    let (base, splice) = match found {
        EnvSpot::List { range, entries } => (entries, range),
        EnvSpot::Missing { after_brace, empty } => {
            let (env, _) = merge(&[], extra);
            let sep = if empty { "" } else { "," };
            let text = format!("\"env\":{}{sep}", render(&env));
            let mut out = json.to_string();
            out.insert_str(after_brace, &text);
            return Ok((out, Vec::new()));
        }
    };
    let (env, overridden) = merge(&base, extra);
    let mut out = String::with_capacity(json.len() + 64);
    out.push_str(&json[..splice.start]);
    out.push_str(&render(&env));
    out.push_str(&json[splice.end..]);
    Ok((out, overridden))
}

/// A JSON array of strings.
fn render(list: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
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

fn find_env(bytes: &[u8]) -> Result<EnvSpot, Syntax> {
    let mut s = Scanner { bytes, pos: 0 };
    let mut spot = None;
    s.object(|s, key| {
        if key != "process" {
            return s.skip_value();
        }
        s.ws();
        let after_brace = s.pos + 1;
        let mut keys = 0;
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
        if spot.is_none() {
            spot = Some(EnvSpot::Missing {
                after_brace,
                empty: keys == 0,
            });
        }
        Ok(())
    })?;
    spot.ok_or(("no process object", 0))
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

/// The merged copy of container `name`'s configuration, when [`prepare`]
/// wrote one.
pub fn config_path(name: &str) -> Option<PathBuf> {
    let path = Path::new(CONFIG_DIR).join(format!("{name}.json"));
    path.exists().then_some(path)
}

/// Writes the merged configuration of every container (nothing when `extra` is
/// empty) and logs each override; a container whose file fails keeps its
/// bundle's configuration, and the failure is logged.
pub fn prepare(names: &[&str], extra: &BTreeMap<String, String>) {
    if extra.is_empty() {
        return;
    }
    if let Err(err) = std::fs::create_dir_all(CONFIG_DIR) {
        log!("creating {CONFIG_DIR}: {err}");
        return;
    }
    for name in names {
        let from = Path::new(layout::CONTAINERS_DIR)
            .join(name)
            .join("config.json");
        let to = Path::new(CONFIG_DIR).join(format!("{name}.json"));
        match prepare_one(&from, &to, extra) {
            Ok(overridden) => {
                for var in overridden {
                    log!("container {name}: provisioned {var} overrides the image's value");
                }
            }
            Err(err) => log!("container {name}: provisioned environment not applied: {err}"),
        }
    }
}

fn prepare_one(
    from: &Path,
    to: &Path,
    extra: &BTreeMap<String, String>,
) -> Result<Vec<String>, EnvError> {
    let json = std::fs::read_to_string(from).map_err(|source| EnvError::Io {
        what: "reading",
        path: from.to_path_buf(),
        source,
    })?;
    let (merged, overridden) = rewrite(&json, extra).map_err(|(reason, at)| EnvError::Json {
        path: from.to_path_buf(),
        reason,
        at,
    })?;
    std::fs::write(to, merged).map_err(|source| EnvError::Io {
        what: "writing",
        path: to.to_path_buf(),
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
    fn rewrites_only_process_env() {
        let (out, overridden) =
            rewrite(CONFIG, &extra(&[("SITE", "north"), ("NEW", "x\"y\n")])).unwrap();
        assert_eq!(overridden, strings(&["SITE"]));
        let env_start = CONFIG.find("\"env\": [").unwrap() + 7;
        let env_end = CONFIG[env_start..].find(']').unwrap() + env_start + 1;
        assert_eq!(out[..env_start], CONFIG[..env_start]);
        assert!(out.ends_with(&CONFIG[env_end..]));
        assert!(
            out.contains(
                r#""env": ["PATH=/usr/bin:/bin","SITE=north","QUOTE=a\"b\\cé","NEW=x\"y\u000a"]"#
            ),
            "{out}"
        );
        // What was written reads back as the merged list.
        let EnvSpot::List { entries, .. } = find_env(out.as_bytes()).unwrap() else {
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
    }

    #[test]
    fn adds_env_when_the_process_has_none() {
        let (out, _) = rewrite(r#"{"process": {"cwd": "/"}}"#, &extra(&[("A", "1")])).unwrap();
        assert_eq!(out, r#"{"process": {"env":["A=1"],"cwd": "/"}}"#);
        let (out, _) = rewrite(r#"{"process": {}}"#, &extra(&[("A", "1")])).unwrap();
        assert_eq!(out, r#"{"process": {"env":["A=1"]}}"#);
    }

    #[test]
    fn refuses_what_is_not_a_runtime_configuration() {
        let e = extra(&[("A", "1")]);
        assert!(rewrite("", &e).is_err());
        assert!(rewrite(r#"{"root": {}}"#, &e).is_err());
        assert!(rewrite(r#"{"process": {"env": ["A=1", 2]}}"#, &e).is_err());
        assert!(rewrite(r#"{"process": {"env": ["unterminated]}}"#, &e).is_err());
    }

    #[test]
    fn copies_the_bundle_configuration_with_the_merged_env() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("config.json");
        let to = dir.path().join("web.json");
        assert!(matches!(
            prepare_one(&from, &to, &extra(&[("A", "1")])),
            Err(EnvError::Io {
                what: "reading",
                ..
            })
        ));
        std::fs::write(&from, CONFIG).unwrap();
        assert_eq!(
            prepare_one(&from, &to, &extra(&[("SITE", "n")])).unwrap(),
            strings(&["SITE"])
        );
        assert!(std::fs::read_to_string(&to).unwrap().contains("\"SITE=n\""));
    }
}
