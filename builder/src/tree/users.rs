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

/// The user and groups a container's process runs as: [`resolve`]'s user and
/// group, and, when no group is named, the supplementary groups that list the
/// user as a member in the root's `/etc/group`, in the file's order (as Docker
/// and Podman set them, through runc's and crun's lookup). A user with no
/// passwd entry (a bare UID) or a root without `/etc/group` gets none.
pub fn resolve_process(user: &str, rootfs: &Tree) -> Result<ProcessUser, UserError> {
    let (uid, gid) = resolve(user, rootfs)?;
    let additional = if user.contains(':') {
        Vec::new()
    } else {
        let name = match user.parse::<u32>() {
            Ok(uid) => name_of(rootfs, uid),
            Err(_) => Some(user.to_string()),
        };
        match (name, read(rootfs, "etc/group")) {
            (Some(name), Some(groups)) => member_of(&groups, &name),
            _ => Vec::new(),
        }
    };
    Ok(ProcessUser {
        uid,
        gid,
        additional,
    })
}

/// A container process's numeric user, group and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    /// The OCI runtime config's `additionalGids`.
    pub additional: Vec<u32>,
}

/// The name of `uid`'s first line in the root's `/etc/passwd`.
fn name_of(rootfs: &Tree, uid: u32) -> Option<String> {
    let text = read(rootfs, "etc/passwd")?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    })
}

/// The GIDs of the `/etc/group` lines whose member list (the fourth field)
/// names `user`, each once, in the file's order.
fn member_of(groups: &str, user: &str) -> Vec<u32> {
    let mut gids: Vec<u32> = Vec::new();
    for line in groups.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let Some(gid) = f.get(2).and_then(|g| g.parse().ok()) else {
            continue;
        };
        let member = f
            .get(3)
            .is_some_and(|members| members.split(',').any(|m| m.trim() == user));
        if member && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    gids
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
        tree.add_bytes(
            "etc/group",
            b"root:x:0:\nwww-data:x:33:\nadm:x:4:www-data,syslog\nssl-cert:x:109:postgres,www-data\nbroken\n",
            0o644,
        )
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

    #[test]
    fn a_named_user_gets_the_groups_that_list_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = root(dir.path());
        let ids = |user: &str| resolve_process(user, &tree).unwrap();
        assert_eq!(
            ids("www-data"),
            ProcessUser {
                uid: 33,
                gid: 33,
                additional: vec![4, 109],
            }
        );
        // A UID with a passwd entry is that user.
        assert_eq!(ids("33").additional, vec![4, 109]);
        // A named group replaces the lookup, as with Docker's `--user u:g`.
        assert_eq!(ids("www-data:adm").additional, Vec::<u32>::new());
        assert_eq!(ids("www-data:adm").gid, 4);
        // Members of nothing; a UID the passwd does not know.
        assert_eq!(ids("root").additional, Vec::<u32>::new());
        assert_eq!(ids("1000").additional, Vec::<u32>::new());
        // No /etc/group: no supplementary groups, and no error.
        let mut bare = Tree::new(dir.path());
        bare.add_bytes("etc/passwd", b"app:x:1000:1000::/:/bin/sh\n", 0o644)
            .unwrap();
        assert_eq!(
            resolve_process("app", &bare),
            Ok(ProcessUser {
                uid: 1000,
                gid: 1000,
                additional: Vec::new(),
            })
        );
    }

    #[test]
    fn member_lists_match_whole_names_once() {
        let groups =
            "a:x:10:postgresql\nb:x:11:xpostgres,postgres\nc:x:11:postgres\nd:x:zz:postgres\n";
        assert_eq!(member_of(groups, "postgres"), vec![11]);
        assert_eq!(member_of(groups, "postgresql"), vec![10]);
    }
}
