//! Users and groups by name, looked up in a root's own `/etc/passwd` and
//! `/etc/group` at build time, as the container's C library would at run time.

use std::fs;

use crate::tree::{Node, NodeKind, Tree};

/// A user or group the root does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// The root has no such file: nothing can be named, only numbers work.
    #[error("the container's root has no /{file}, so {what} {name:?} cannot be looked up: use a number, or add the file")]
    NoFile {
        file: &'static str,
        what: &'static str,
        name: String,
    },
    /// The file is there but does not name it.
    #[error("{what} {name:?} is not in the container's /{file}")]
    Unknown {
        file: &'static str,
        what: &'static str,
        name: String,
    },
}

/// A numeric user and group: `NAME`, `UID`, `UID:GID` or `NAME:GROUP` resolved.
/// A user without a group gets its passwd entry's group (a bare UID, the GID of
/// the same number, as OCI image configs have it).
pub fn resolve(user: &str, rootfs: &Tree) -> Result<(u32, u32), UserError> {
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup(rootfs, "etc/passwd", "user", name)?,
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup(rootfs, "etc/group", "group", group)?.0,
        };
    }
    Ok((uid, gid))
}

/// The third and fourth fields of `name`'s line in `file` (for /etc/group the
/// fourth is the member list, and only the third is used).
fn lookup(
    rootfs: &Tree,
    file: &'static str,
    what: &'static str,
    name: &str,
) -> Result<(u32, u32), UserError> {
    let text = read(rootfs, file).ok_or_else(|| UserError::NoFile {
        file,
        what,
        name: name.to_string(),
    })?;
    text.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().unwrap_or(0))))
                .flatten()
        })
        .ok_or_else(|| UserError::Unknown {
            file,
            what,
            name: name.to_string(),
        })
}

/// The text of a regular file of the tree (symlinks followed inside it).
pub fn read(rootfs: &Tree, file: &str) -> Option<String> {
    let key = rootfs.resolve(file, true).ok()??;
    let Some(Node {
        kind: NodeKind::File(path),
        ..
    }) = rootfs.get(&key)
    else {
        return None;
    };
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &std::path::Path) -> Tree {
        let mut tree = Tree::new(dir);
        tree.add_bytes(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
            0o644,
        )
        .unwrap();
        tree.add_bytes("etc/group", b"root:x:0:\nwww-data:x:33:\nadm:x:4:\n", 0o644)
            .unwrap();
        tree
    }

    #[test]
    fn names_resolve_through_the_roots_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root(dir.path());
        assert_eq!(resolve("www-data", &tree), Ok((33, 33)));
        assert_eq!(resolve("www-data:adm", &tree), Ok((33, 4)));
        assert_eq!(resolve("1000", &tree), Ok((1000, 1000)));
        assert_eq!(resolve("1000:7", &tree), Ok((1000, 7)));
        assert_eq!(resolve("0:adm", &tree), Ok((0, 4)));
    }

    #[test]
    fn unknown_names_and_missing_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root(dir.path());
        let err = resolve("postgres", &tree).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"postgres\" is not in the container's /etc/passwd"
        );
        let err = resolve("root:wheel", &tree).unwrap_err();
        assert!(err
            .to_string()
            .contains("group \"wheel\" is not in the container's /etc/group"));
        let empty = Tree::new(dir.path());
        let err = resolve("www-data", &empty).unwrap_err();
        assert!(err.to_string().contains("has no /etc/passwd"), "{err}");
        assert_eq!(resolve("33:33", &empty), Ok((33, 33)));
    }
}
