//! The staging tree: a root filesystem assembled without root privileges.
//!
//! Metadata (kind, mode, owner) lives in memory and is written into the filesystem
//! image by its writer; file contents live in a staging folder under opaque names.
//! Paths are keys, never host paths, so nothing an input says can make the builder
//! write outside its staging folder: `..` is clamped at the root and symlinks in
//! parent directories are followed inside the tree only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Symlinks followed while resolving one path before giving up (as Linux's ELOOP).
const MAX_SYMLINKS: usize = 40;
/// Longest path berth accepts from an input (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// Longest file name (one path component) berth accepts (Linux's NAME_MAX).
const MAX_NAME: usize = 255;
/// Largest tar extension header (PAX, GNU long name or link) berth reads: they
/// are read into memory, so a layer could otherwise ask for gigabytes.
pub const MAX_EXTENSION: u64 = 1 << 20;

/// Failure while building the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("staging {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Refused { path: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    /// A regular file whose content is the host file at this path.
    File(PathBuf),
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// A root filesystem under construction. Keys are relative paths without leading
/// `/` (`usr/bin/crun`); the root itself is implicit.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    staging: PathBuf,
    /// Bytes of file content this tree may still stage (`None`: no limit).
    budget: Option<u64>,
    /// The limit `budget` started from, for the message.
    limit: u64,
    /// Archive entries this tree may still read (`None`: no limit).
    entries_left: Option<u64>,
    /// The limit `entries_left` started from, for the message.
    entry_limit: u64,
}

static STAGED: AtomicU64 = AtomicU64::new(0);

/// Normalizes a path from an input into a tree key: `/`, `.` and empty components
/// dropped, `..` clamped at the root. Returns `None` for the root itself.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn parent_of(key: &str) -> Option<&str> {
    key.rsplit_once('/').map(|(p, _)| p)
}

impl Tree {
    /// An empty tree whose file contents go to `staging` (which must exist).
    pub fn new(staging: &Path) -> Tree {
        Tree {
            nodes: BTreeMap::new(),
            staging: staging.to_path_buf(),
            budget: None,
            limit: 0,
            entries_left: None,
            entry_limit: 0,
        }
    }

    /// Limits the archive entries this tree reads to `entries` in all, counted
    /// as they are read (whiteouts, links, empty files and entries that replace
    /// earlier ones too): millions of empty files cost no bytes but an inode
    /// and a staging file each, and a node in memory.
    pub fn set_entry_limit(&mut self, entries: u64) {
        self.entries_left = Some(entries);
        self.entry_limit = entries;
    }

    /// Limits the file content this tree stages to `bytes` in all (a layer
    /// that decompresses without end cannot fill the build's disk).
    pub fn set_limit(&mut self, bytes: u64) {
        self.budget = Some(bytes);
        self.limit = bytes;
    }

    /// All nodes, parents before children.
    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.nodes.get(key)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Resolves `path` inside the tree: symlinks in every component but the last
    /// are followed (absolute targets from the tree's root, `..` clamped there);
    /// with `follow_last`, the last one too. Returns the key (`None` for the root).
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<String>, TreeError> {
        if path.len() > MAX_PATH {
            return Err(TreeError::Refused {
                path: path.chars().take(64).collect::<String>() + "…",
                reason: format!("path longer than {MAX_PATH} bytes"),
            });
        }
        let mut todo: Vec<String> = path
            .split('/')
            .rev()
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            done.push(c);
            let is_last = todo.is_empty();
            if is_last && !follow_last {
                break;
            }
            let key = done.join("/");
            if let Some(Node {
                kind: NodeKind::Symlink(target),
                ..
            }) = self.nodes.get(&key)
            {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(TreeError::Refused {
                        path: path.to_string(),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .rev()
                        .filter(|c| !c.is_empty() && *c != ".")
                        .map(str::to_string),
                );
            }
        }
        Ok((!done.is_empty()).then(|| done.join("/")))
    }

    /// Where an entry named `path` by an input lands: its parent resolved through
    /// symlinks inside the tree, its own name kept. `None` for the root.
    fn place(&self, path: &str) -> Result<Option<String>, TreeError> {
        let Some(normal) = normalize(path) else {
            return Ok(None);
        };
        let (parent, name) = match normal.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, normal.as_str()),
        };
        let parent = match parent {
            Some(p) => self.resolve(p, true)?,
            None => None,
        };
        Ok(Some(match parent {
            Some(p) => format!("{p}/{name}"),
            None => name.to_string(),
        }))
    }

    /// Makes sure every parent of `key` is a directory (creating missing ones
    /// `0755 root:root`); a non-directory in the way is replaced.
    fn ensure_parents(&mut self, key: &str) {
        let mut at = 0;
        while let Some(i) = key[at..].find('/') {
            let parent = &key[..at + i];
            let ok = matches!(self.nodes.get(parent), Some(n) if n.kind == NodeKind::Dir);
            if !ok {
                self.remove_key(parent);
                self.nodes.insert(parent.to_string(), Node::dir(0o755));
            }
            at += i + 1;
        }
    }

    /// Inserts `node` at the key, replacing what was there (a directory replaced by
    /// a non-directory loses its children, as unpacking a layer would).
    pub fn insert(&mut self, key: &str, node: Node) {
        self.ensure_parents(key);
        if node.kind == NodeKind::Dir {
            if let Some(existing) = self.nodes.get_mut(key) {
                if existing.kind == NodeKind::Dir {
                    existing.mode = node.mode;
                    existing.uid = node.uid;
                    existing.gid = node.gid;
                    return;
                }
            }
        }
        self.remove_key(key);
        self.nodes.insert(key.to_string(), node);
    }

    /// Removes a key and everything below it.
    pub fn remove_key(&mut self, key: &str) {
        self.nodes.remove(key);
        let prefix = format!("{key}/");
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
    }

    /// Keys directly or indirectly below `key`.
    pub fn children_of(&self, key: Option<&str>) -> Vec<String> {
        match key {
            None => self.nodes.keys().cloned().collect(),
            Some(key) => {
                let prefix = format!("{key}/");
                self.nodes
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect()
            }
        }
    }

    /// Adds a directory at an absolute or relative path (parents created).
    pub fn add_dir(&mut self, path: &str, mode: u32) {
        if let Some(key) = normalize(path) {
            self.insert(&key, Node::dir(mode));
        }
    }

    /// Adds a file whose content is an existing host file (not copied).
    pub fn add_host_file(&mut self, path: &str, source: &Path, mode: u32) {
        if let Some(key) = normalize(path) {
            self.insert(
                &key,
                Node {
                    kind: NodeKind::File(source.to_path_buf()),
                    mode,
                    uid: 0,
                    gid: 0,
                },
            );
        }
    }

    /// Adds a file with the given content (written to the staging folder).
    pub fn add_bytes(&mut self, path: &str, bytes: &[u8], mode: u32) -> Result<(), TreeError> {
        let staged = self.stage(&mut io::Cursor::new(bytes))?;
        self.add_host_file(path, &staged, mode);
        Ok(())
    }

    /// Adds a symlink.
    pub fn add_symlink(&mut self, path: &str, target: &str) {
        if let Some(key) = normalize(path) {
            self.insert(
                &key,
                Node {
                    kind: NodeKind::Symlink(target.to_string()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
            );
        }
    }

    /// Copies a reader's bytes into a new staging file.
    fn stage(&mut self, reader: &mut dyn Read) -> Result<PathBuf, TreeError> {
        // Several trees share one staging folder: names are unique per process.
        let n = STAGED.fetch_add(1, Ordering::Relaxed);
        let path = self.staging.join(format!("{n:08}"));
        let mut file = File::create(&path).map_err(io_err(&path))?;
        match self.budget {
            None => {
                io::copy(reader, &mut file).map_err(io_err(&path))?;
            }
            Some(left) => {
                let n = io::copy(&mut reader.take(left.saturating_add(1)), &mut file)
                    .map_err(io_err(&path))?;
                if n > left {
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    return Err(TreeError::Refused {
                        path: String::new(),
                        reason: format!(
                            "the files unpack to more than {} MiB, the limit for one container",
                            self.limit >> 20
                        ),
                    });
                }
                self.budget = Some(left - n);
            }
        }
        Ok(path)
    }

    /// Moves every node of `other` below `prefix` in this tree.
    pub fn graft(&mut self, prefix: &str, other: Tree) {
        let prefix = normalize(prefix).unwrap_or_default();
        if !prefix.is_empty() {
            self.add_dir(&prefix, 0o755);
        }
        for (key, node) in other.nodes {
            let key = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}/{key}")
            };
            self.nodes.insert(key, node);
        }
    }

    /// Copies the node at `key` (and, for a symlink, what it points to, recursively)
    /// from `other`, which must share this tree's staging folder or point at host
    /// files that outlive the build.
    pub fn copy_from(&mut self, other: &Tree, key: &str) -> Result<(), TreeError> {
        let mut key = key.to_string();
        for _ in 0..MAX_SYMLINKS {
            // Parents of the key may themselves be symlinks in `other`.
            if let Some(parent) = parent_of(&key) {
                if let Some(resolved) = other.resolve(parent, false)? {
                    if matches!(
                        other.get(&resolved),
                        Some(Node {
                            kind: NodeKind::Symlink(_),
                            ..
                        })
                    ) {
                        self.copy_from(other, &resolved)?;
                    }
                }
            }
            let node = other.get(&key).cloned().ok_or_else(|| TreeError::Refused {
                path: key.clone(),
                reason: "not found".into(),
            })?;
            // One hop at a time, so intermediate links are copied too.
            let next = match &node.kind {
                NodeKind::Symlink(target) if target.starts_with('/') => other.place(target)?,
                NodeKind::Symlink(target) => match parent_of(&key) {
                    Some(parent) => other.place(&format!("{parent}/{target}"))?,
                    None => other.place(target)?,
                },
                _ => None,
            };
            self.insert(&key, node);
            match next {
                Some(target) if self.get(&target).is_none() => key = target,
                _ => return Ok(()),
            }
        }
        Err(TreeError::Refused {
            path: key,
            reason: "too many levels of symbolic links".into(),
        })
    }

    /// Unpacks one container image layer (an uncompressed tar stream): its
    /// headers checked by [`TarGuard`], whiteouts applied.
    pub fn unpack_layer<R: Read>(&mut self, layer: R) -> Result<(), TreeError> {
        self.unpack_tar(&mut tar::Archive::new(TarGuard::new(layer)), true)
    }

    /// Unpacks a tar stream (a package's data or an OCI layer) into the tree.
    /// With `whiteouts`, OCI whiteout files delete what earlier layers put there.
    pub fn unpack_tar<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        whiteouts: bool,
    ) -> Result<(), TreeError> {
        let refused = |path: &str, reason: String| TreeError::Refused {
            path: path.to_string(),
            reason,
        };
        // Paths this layer itself created, which an opaque whiteout keeps.
        let mut this_layer: Vec<String> = Vec::new();
        let entries = archive.entries().map_err(io_err(Path::new("tar")))?;
        for entry in entries {
            if let Some(left) = self.entries_left.as_mut() {
                if *left == 0 {
                    return Err(refused(
                        "tar",
                        format!(
                            "more than {} entries, the limit for one container",
                            self.entry_limit
                        ),
                    ));
                }
                *left -= 1;
            }
            let mut entry = entry.map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => refused("tar", e.to_string()),
                _ => TreeError::Io {
                    path: PathBuf::from("tar"),
                    source: e,
                },
            })?;
            let bytes = entry.path_bytes();
            if bytes.len() > MAX_PATH {
                return Err(refused(
                    &(String::from_utf8_lossy(&bytes[..64]).to_string() + "…"),
                    format!("path of {} bytes is longer than {MAX_PATH}", bytes.len()),
                ));
            }
            let raw_path = match std::str::from_utf8(&bytes) {
                Ok(p) => p.to_string(),
                Err(_) => {
                    return Err(refused(
                        &String::from_utf8_lossy(&bytes),
                        "path is not UTF-8 (berth keeps paths as text)".into(),
                    ))
                }
            };
            drop(bytes);
            if let Some(long) = raw_path.split('/').find(|c| c.len() > MAX_NAME) {
                return Err(refused(
                    &(raw_path.chars().take(64).collect::<String>() + "…"),
                    format!(
                        "file name of {} bytes is longer than {MAX_NAME}",
                        long.len()
                    ),
                ));
            }
            let name = raw_path.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
            if whiteouts && name.starts_with(".wh.") {
                let dir = normalize(&raw_path).and_then(|k| parent_of(&k).map(str::to_string));
                let dir = match dir {
                    Some(d) => self.resolve(&d, true)?,
                    None => None,
                };
                if name == ".wh..wh..opq" {
                    for k in self.children_of(dir.as_deref()) {
                        if !this_layer
                            .iter()
                            .any(|t| t == &k || k.starts_with(&format!("{t}/")))
                        {
                            self.nodes.remove(&k);
                        }
                    }
                } else {
                    let target = &name[4..];
                    if target.is_empty() || target == "." || target == ".." {
                        return Err(refused(&raw_path, "whiteout of an invalid name".into()));
                    }
                    let key = match dir {
                        Some(d) => format!("{d}/{target}"),
                        None => target.to_string(),
                    };
                    self.remove_key(&key);
                }
                continue;
            }
            let Some(key) = self.place(&raw_path)? else {
                continue; // the root folder itself
            };
            let header = entry.header();
            let mode = header.mode().map_err(io_err(Path::new(&raw_path)))? & 0o7777;
            let uid = u32::try_from(header.uid().unwrap_or(0)).unwrap_or(0);
            let gid = u32::try_from(header.gid().unwrap_or(0)).unwrap_or(0);
            let kind = match header.entry_type() {
                tar::EntryType::Directory => NodeKind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    NodeKind::File(self.stage(&mut entry).map_err(|e| match e {
                        TreeError::Refused { reason, .. } => refused(&raw_path, reason),
                        e => e,
                    })?)
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).to_string())
                        .ok_or_else(|| refused(&raw_path, "symlink without a target".into()))?;
                    if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
                        return Err(refused(
                            &raw_path,
                            format!(
                                "symlink target of {} bytes is empty or too long",
                                target.len()
                            ),
                        ));
                    }
                    // Kept as written: it is only ever followed inside the
                    // container's root (here by `resolve`, on the device by the
                    // kernel inside the container's mount namespace).
                    NodeKind::Symlink(target)
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).to_string())
                        .ok_or_else(|| refused(&raw_path, "hard link without a target".into()))?;
                    let source = self.resolve(&target, false)?;
                    match source.as_deref().and_then(|s| self.nodes.get(s)) {
                        Some(
                            node @ Node {
                                kind: NodeKind::File(_),
                                ..
                            },
                        ) => node.kind.clone(),
                        _ => {
                            return Err(refused(
                                &raw_path,
                                format!(
                                "hard link to {target:?}, which is not a file unpacked before it"
                            ),
                            ))
                        }
                    }
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    // The runtime mounts its own /dev over the container's: nodes
                    // there are dropped. Anywhere else a node would be a way
                    // around the runtime's device rules: refused.
                    if key == "dev" || key.starts_with("dev/") {
                        continue;
                    }
                    if whiteouts {
                        return Err(refused(
                            &raw_path,
                            "device node outside /dev: berth refuses device nodes in container images (the runtime provides /dev)".into(),
                        ));
                    }
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    if header.entry_type() == tar::EntryType::Char {
                        NodeKind::CharDevice { major, minor }
                    } else {
                        NodeKind::BlockDevice { major, minor }
                    }
                }
                tar::EntryType::Fifo => NodeKind::Fifo,
                tar::EntryType::GNUSparse => {
                    return Err(refused(&raw_path, "sparse files are not supported".into()))
                }
                // Extended headers are consumed by the tar crate; anything else
                // (sparse files, unknown types) is refused rather than guessed at.
                other => {
                    return Err(refused(
                        &raw_path,
                        format!("unsupported tar entry type {other:?}"),
                    ))
                }
            };
            this_layer.push(key.clone());
            self.insert(
                &key,
                Node {
                    kind,
                    mode,
                    uid,
                    gid,
                },
            );
        }
        Ok(())
    }
}

/// A reader that checks a tar stream's headers as they go by, before the tar
/// crate sees them: extension headers (PAX `x`/`g`, GNU `L`/`K`) larger than
/// [`MAX_EXTENSION`] and GNU sparse entries are refused with an
/// [`io::ErrorKind::InvalidData`] error, so a hostile layer cannot make the
/// builder buffer gigabytes of "file name".
#[derive(Debug)]
pub struct TarGuard<R> {
    inner: R,
    header: Vec<u8>,
    /// Bytes of the current entry's data and padding still to pass.
    remaining: u64,
    /// Content of a PAX header being read, and how much of it is left.
    pax: Option<(Vec<u8>, u64)>,
    /// A `size` from the last PAX header: the next entry's real data length.
    next_size: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            header: Vec::with_capacity(512),
            remaining: 0,
            pax: None,
            next_size: None,
        }
    }

    fn refuse(reason: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|&b| b == 0) {
            return Ok(()); // end-of-archive block
        }
        let field = &h[124..136];
        let size = if field[0] & 0x80 != 0 {
            // Base-256: big-endian, the high bit of the first byte is the marker.
            let mut n: u64 = u64::from(field[0] & 0x7f);
            for &b in &field[1..] {
                n = n
                    .checked_mul(256)
                    .and_then(|n| n.checked_add(u64::from(b)))
                    .ok_or_else(|| Self::refuse("tar entry size overflows".into()))?;
            }
            n
        } else {
            let text: String = field
                .iter()
                .map(|&b| b as char)
                .filter(|c| !matches!(c, '\0' | ' '))
                .collect();
            if text.is_empty() {
                0
            } else {
                u64::from_str_radix(&text, 8)
                    .map_err(|_| Self::refuse(format!("tar header size {text:?} is not octal")))?
            }
        };
        let kind = h[156];
        let data = match kind {
            b'x' | b'g' | b'L' | b'K' => {
                if size > MAX_EXTENSION {
                    return Err(Self::refuse(format!(
                        "tar extension header ({}) of {size} bytes is larger than {MAX_EXTENSION}",
                        kind as char
                    )));
                }
                if kind == b'x' {
                    self.pax = Some((Vec::new(), size));
                }
                size
            }
            b'S' => return Err(Self::refuse("GNU sparse files are not supported".into())),
            _ => self.next_size.take().unwrap_or(size),
        };
        self.remaining = data
            .checked_add(511)
            .map(|n| n / 512 * 512)
            .ok_or_else(|| Self::refuse("tar entry size overflows".into()))?;
        Ok(())
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                if let Some((content, left)) = &mut self.pax {
                    let keep = usize::try_from(*left).unwrap_or(usize::MAX).min(take);
                    content.extend_from_slice(&bytes[..keep]);
                    *left -= keep as u64;
                }
                self.remaining -= take as u64;
                bytes = &bytes[take..];
                if self.remaining == 0 {
                    if let Some((content, _)) = self.pax.take() {
                        self.next_size = pax_size(&content);
                    }
                }
            } else {
                let take = (512 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 512 {
                    self.on_header()?;
                }
            }
        }
        Ok(())
    }
}

/// The `size` record of a PAX extended header's content.
fn pax_size(content: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(content);
    text.lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("size=")?.parse().ok()
    })
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // set_path refuses `..`; write the raw name like a hostile tar would.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(tree: &mut Tree, bytes: Vec<u8>) -> Result<(), TreeError> {
        tree.unpack_tar(&mut tar::Archive::new(io::Cursor::new(bytes)), true)
    }

    #[test]
    fn normalize_clamps_dotdot() {
        assert_eq!(normalize("/a/./b/"), Some("a/b".into()));
        assert_eq!(normalize("../../etc/passwd"), Some("etc/passwd".into()));
        assert_eq!(normalize("/"), None);
    }

    #[test]
    fn symlinked_parents_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        use tar::EntryType::*;
        unpack(
            &mut t,
            tar_of(&[
                ("etc", Symlink, "/../../../../host-etc", b""),
                ("etc/passwd", Regular, "", b"x"),
                ("rel", Symlink, "../../..", b""),
                ("rel/escape", Regular, "", b"y"),
                ("../outside", Regular, "", b"z"),
            ]),
        )
        .unwrap();
        let keys: Vec<&String> = t.nodes().map(|(k, _)| k).collect();
        assert!(keys.contains(&&"host-etc/passwd".to_string()), "{keys:?}");
        assert!(keys.contains(&&"escape".to_string()), "{keys:?}");
        assert!(keys.contains(&&"outside".to_string()), "{keys:?}");
        // Nothing but opaque staging files was written to disk.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_digit()), "{name}");
        }
    }

    #[test]
    fn whiteouts_remove_lower_layers() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        use tar::EntryType::*;
        unpack(
            &mut t,
            tar_of(&[
                ("a/", Directory, "", b""),
                ("a/old", Regular, "", b"1"),
                ("b", Regular, "", b"2"),
                ("c/", Directory, "", b""),
                ("c/keep", Regular, "", b"3"),
            ]),
        )
        .unwrap();
        unpack(
            &mut t,
            tar_of(&[
                ("a/new", Regular, "", b"4"),
                ("a/.wh..wh..opq", Regular, "", b""),
                (".wh.b", Regular, "", b""),
            ]),
        )
        .unwrap();
        assert!(t.get("a/old").is_none());
        assert!(t.get("a/new").is_some());
        assert!(t.get("b").is_none());
        assert!(t.get("c/keep").is_some());
        let bad = unpack(&mut t, tar_of(&[("c/.wh...", Regular, "", b"")]));
        assert!(matches!(bad, Err(TreeError::Refused { .. })));
    }

    #[test]
    fn hard_links_copy_files_and_refuse_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        use tar::EntryType::*;
        unpack(
            &mut t,
            tar_of(&[("f", Regular, "", b"data"), ("g", Link, "f", b"")]),
        )
        .unwrap();
        assert_eq!(t.get("f").unwrap().kind, t.get("g").unwrap().kind);
        let bad = unpack(&mut t, tar_of(&[("h", Link, "/etc/shadow", b"")]));
        assert!(matches!(bad, Err(TreeError::Refused { .. })));
    }

    #[test]
    fn symlink_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        t.add_symlink("a", "b");
        t.add_symlink("b", "a");
        assert!(t.resolve("a/x", true).is_err());
    }

    #[test]
    fn copy_from_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = Tree::new(dir.path());
        src.add_bytes("lib/x86_64-linux-gnu/libz.so.1.2", b"elf", 0o644)
            .unwrap();
        src.add_symlink("lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2");
        src.add_symlink("lib64/ld.so", "/lib/x86_64-linux-gnu/libz.so.1");
        let mut dst = Tree::new(dir.path());
        dst.copy_from(&src, "lib64/ld.so").unwrap();
        assert!(dst.get("lib64/ld.so").is_some());
        assert!(dst.get("lib/x86_64-linux-gnu/libz.so.1").is_some());
        assert!(dst.get("lib/x86_64-linux-gnu/libz.so.1.2").is_some());
    }

    // -----------------------------------------------------------------------
    // Hostile layers: each is confined to the tree or refused with a clear
    // message, and nothing outside the staging folder changes.

    /// Every file and folder under `dir` except `skip`, with contents.
    fn snapshot(dir: &Path, skip: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let e = e.unwrap();
            if e.path().starts_with(skip) {
                continue;
            }
            let content = if e.file_type().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.push((e.path().to_path_buf(), content));
        }
        out
    }

    fn raw_header(kind: u8, name: &[u8], size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let mut bytes = *h.as_bytes();
        bytes[156] = kind;
        // Checksum: sum of the header with the checksum field as spaces.
        bytes[148..156].fill(b' ');
        let sum: u32 = bytes.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        bytes[148..156].copy_from_slice(text.as_bytes());
        bytes
    }

    /// A tar whose GNU long name entry holds `name` (any bytes).
    fn long_name_tar(name: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&raw_header(b'L', b"././@LongLink", name.len() as u64 + 1));
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&raw_header(b'0', b"short", 0));
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn pax_tar(records: &[(&str, &[u8])], name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            // "LEN key=value\n" where LEN counts the whole record.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + rest.to_string().len();
            if len.to_string().len() != rest.to_string().len() {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut out = Vec::new();
        out.extend_from_slice(&raw_header(b'x', b"PaxHeaders/x", body.len() as u64));
        out.extend_from_slice(&body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&raw_header(b'0', name.as_bytes(), data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn hostile_layers_are_confined_or_refused() {
        use tar::EntryType::*;
        let top = tempfile::tempdir().unwrap();
        let staging = top.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let canary = top.path().join("canary");
        std::fs::write(&canary, b"canary: must not change").unwrap();
        std::fs::create_dir(top.path().join("outside")).unwrap();
        let before = snapshot(top.path(), &staging);
        let canary_abs = canary.to_str().unwrap().to_string();
        let outside_abs = top.path().join("outside").to_str().unwrap().to_string();

        enum Expect {
            /// Unpacks, and these keys exist in the tree afterwards.
            Confined(&'static [&'static str]),
            /// Refused, the message containing these words.
            Refused(&'static str),
        }
        use Expect::*;
        let deep = "../".repeat(25);
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            (
                "1 path traversal with ..",
                tar_of(&[(&format!("{deep}canary"), Regular, "", b"evil")]),
                Confined(&["canary"]),
            ),
            (
                "2 absolute path to the canary",
                tar_of(&[(&canary_abs, Regular, "", b"evil")]),
                Confined(&[]),
            ),
            (
                "3 absolute symlink escape, then a file through it",
                tar_of(&[
                    ("out", Symlink, &outside_abs, b""),
                    ("out/planted", Regular, "", b"evil"),
                ]),
                Confined(&["out"]),
            ),
            (
                "4 relative symlink escape, then a file through it",
                tar_of(&[
                    ("up", Symlink, &deep, b""),
                    ("up/canary", Regular, "", b"evil"),
                ]),
                Confined(&["canary", "up"]),
            ),
            (
                "5 symlinked parent pointing at the host's staging parent",
                tar_of(&[
                    ("a/", Directory, "", b""),
                    ("a/b", Symlink, "../../../../..", b""),
                    ("a/b/outside/planted", Regular, "", b"evil"),
                ]),
                Confined(&["outside/planted"]),
            ),
            (
                "6 hard link to a file outside",
                tar_of(&[("h", Link, &canary_abs, b"")]),
                Refused("hard link to"),
            ),
            (
                "7 hard link through .. to the canary",
                tar_of(&[("h", Link, &format!("{deep}canary-missing"), b"")]),
                Refused("which is not a file unpacked before it"),
            ),
            (
                "8 whiteout of ..",
                tar_of(&[("x/.wh...", Regular, "", b"")]),
                Refused("whiteout of an invalid name"),
            ),
            (
                "9 whiteout climbing out with ..",
                tar_of(&[(&format!("{deep}.wh.canary"), Regular, "", b"")]),
                Confined(&[]),
            ),
            (
                "10 block device outside /dev",
                tar_of(&[("disk", Block, "", b"")]),
                Refused("device node outside /dev"),
            ),
            (
                "11 character device in /dev is dropped",
                tar_of(&[("dev/", Directory, "", b""), ("dev/mem", Char, "", b"")]),
                Confined(&["dev"]),
            ),
            (
                "12 huge PAX header (2 GiB claimed)",
                {
                    let mut t = raw_header(b'x', b"PaxHeaders/huge", 2 << 30).to_vec();
                    t.extend_from_slice(&[b'a'; 4096]);
                    t
                },
                Refused("tar extension header (x) of 2147483648 bytes"),
            ),
            (
                "13 huge GNU long name header",
                {
                    let mut t = raw_header(b'L', b"././@LongLink", 1 << 30).to_vec();
                    t.extend_from_slice(&[b'a'; 4096]);
                    t
                },
                Refused("tar extension header (L)"),
            ),
            (
                "14 path longer than PATH_MAX",
                long_name_tar("a/".repeat(3000).as_bytes()),
                Refused("is longer than 4096"),
            ),
            (
                "15 file name longer than NAME_MAX",
                long_name_tar("n".repeat(300).as_bytes()),
                Refused("file name of 300 bytes is longer than 255"),
            ),
            (
                "16 name that is not UTF-8",
                long_name_tar(b"bad\xff\xfename"),
                Refused("not UTF-8"),
            ),
            (
                "17 GNU sparse file",
                {
                    let mut t = raw_header(b'S', b"sparse", 0).to_vec();
                    t.extend_from_slice(&[0u8; 1024]);
                    t
                },
                Refused("sparse files are not supported"),
            ),
            (
                "18 symlink loop",
                tar_of(&[
                    ("l1", Symlink, "l2", b""),
                    ("l2", Symlink, "l1", b""),
                    ("l1/x", Regular, "", b""),
                ]),
                Refused("too many levels of symbolic links"),
            ),
            (
                "19 PAX path with .. and an xattr",
                pax_tar(
                    &[
                        ("path", format!("{deep}pax-canary").as_bytes()),
                        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
                    ],
                    "ignored",
                    b"evil",
                ),
                Confined(&["pax-canary"]),
            ),
        ];
        assert!(cases.len() >= 12);
        for (what, bytes, expect) in cases {
            let mut tree = Tree::new(&staging);
            let result = tree.unpack_layer(io::Cursor::new(bytes));
            match (expect, result) {
                (Confined(keys), Ok(())) => {
                    for key in keys {
                        assert!(tree.get(key).is_some(), "{what}: {key} missing: {tree:?}");
                    }
                    for (key, _) in tree.nodes() {
                        assert!(
                            !key.starts_with('/') && !key.split('/').any(|c| c == ".."),
                            "{what}: {key}"
                        );
                    }
                }
                (Refused(words), Err(e)) => {
                    let text = e.to_string();
                    assert!(text.contains(words), "{what}: {text:?} lacks {words:?}");
                }
                (Confined(_), Err(e)) => panic!("{what}: refused: {e}"),
                (Refused(words), Ok(())) => {
                    panic!("{what}: accepted (expected {words:?}): {tree:?}")
                }
            }
            assert_eq!(
                snapshot(top.path(), &staging),
                before,
                "{what}: the host changed"
            );
        }
        assert_eq!(std::fs::read(&canary).unwrap(), b"canary: must not change");
        // The staging folder holds only opaque, numbered content files.
        for e in std::fs::read_dir(&staging).unwrap() {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file());
            let name = e.file_name().into_string().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_digit()), "{name}");
        }
    }

    #[test]
    fn a_layer_past_the_size_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        t.set_limit(1 << 20);
        let big = vec![0u8; 600 << 10];
        use tar::EntryType::*;
        let err = unpack_layer_bytes(
            &mut t,
            tar_of(&[("a", Regular, "", &big), ("b", Regular, "", &big)]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("b: the files unpack to more than 1 MiB"),
            "{err}"
        );
        // Only the first file's content stayed; the cut one was removed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn unpack_layer_bytes(tree: &mut Tree, bytes: Vec<u8>) -> Result<(), TreeError> {
        tree.unpack_layer(io::Cursor::new(bytes))
    }

    #[test]
    fn setuid_bits_and_owners_are_kept_and_pax_sizes_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(dir.path());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_gid(50);
        h.set_size(3);
        b.append_data(&mut h, "usr/bin/su", &b"abc"[..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        // A PAX size that differs from the header's (as for files over 8 GiB).
        bytes.extend_from_slice(&pax_tar(&[("size", b"5")], "after", b"12345"));
        let trimmed: Vec<u8> = {
            // Drop the first archive's end blocks so both parts are one stream.
            let first = 512 + 512;
            let mut v = bytes[..first].to_vec();
            v.extend_from_slice(&bytes[first + 1024..]);
            v
        };
        t.unpack_layer(io::Cursor::new(trimmed)).unwrap();
        let su = t.get("usr/bin/su").unwrap();
        assert_eq!((su.mode, su.uid, su.gid), (0o4755, 0, 50));
        let NodeKind::File(after) = &t.get("after").unwrap().kind else {
            panic!("after is not a file")
        };
        assert_eq!(std::fs::read(after).unwrap(), b"12345");
    }
}
