//! The user's files: `files` entries of a container or of `[image]` copied into
//! a tree.
//!
//! Contents are the host files themselves; only metadata is chosen here, and
//! nothing of the host's but the owner's execute bit gets in: modes are the
//! recipe's (or 0755/0644 from that bit), owners the recipe's (or root), times
//! the build's fixed time (the filesystem writers give every entry the same).
//! So the same folder gives the same image under any umask or checkout time.
//!
//! Every key is placed through [`Tree::resolve`], which follows symlinks inside
//! the tree and clamps `..` at its root: whatever links a root holds, a file
//! lands inside it. The target itself is replaced, even when it is a symlink
//! (Debian's `sites-enabled/default` is one); a folder is merged into the folder
//! already there.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::recipe::{FileCopy, RecipeError};
use crate::tree::{users, Node, NodeKind, Tree, TreeError};

/// A `files` entry that cannot be copied.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Points at the recipe's entry.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Copies every entry of `files` into `tree`, in recipe order (a later entry
/// wins where two overlap). Owner names resolve through the tree's own
/// /etc/passwd and /etc/group, as they are before the copy.
pub fn copy_into(tree: &mut Tree, files: &[FileCopy]) -> Result<(), FilesError> {
    for file in files {
        let (uid, gid) = match &file.owner {
            Some(owner) => users::resolve(owner, tree).map_err(|e| {
                file.at
                    .error(format!("owner of {}: {e}", file.source.display()))
            })?,
            None => (0, 0),
        };
        let target = place(tree, &file.target)?;
        let meta = fs::metadata(&file.source).map_err(|e| {
            file.at
                .error(format!("cannot read {}: {e}", file.source.display()))
        })?;
        if meta.is_dir() {
            copy_folder(tree, file, &target, uid, gid)?;
        } else if meta.is_file() {
            tree.insert(
                &target,
                Node {
                    kind: NodeKind::File(file.source.clone()),
                    mode: file.mode.unwrap_or_else(|| default_mode(&meta)),
                    uid,
                    gid,
                },
            );
        } else {
            return Err(file
                .at
                .error(format!(
                    "{} is neither a file nor a folder",
                    file.source.display()
                ))
                .into());
        }
    }
    Ok(())
}

/// Where `key` lands: its parent resolved through symlinks inside the tree,
/// its own name kept.
fn place(tree: &Tree, key: &str) -> Result<String, TreeError> {
    Ok(match key.rsplit_once('/') {
        Some((parent, name)) => match tree.resolve(parent, true)? {
            Some(parent) => format!("{parent}/{name}"),
            None => name.to_string(),
        },
        None => key.to_string(),
    })
}

/// A folder and everything in it, in name order; folders 0755, files the
/// entry's mode; symlinks copied as they are (they resolve in the container).
fn copy_folder(
    tree: &mut Tree,
    file: &FileCopy,
    target: &str,
    uid: u32,
    gid: u32,
) -> Result<(), FilesError> {
    let dir = |mode| Node {
        kind: NodeKind::Dir,
        mode,
        uid,
        gid,
    };
    tree.insert(target, dir(0o755));
    let walk = walkdir::WalkDir::new(&file.source)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(|e| {
            file.at
                .error(format!("cannot read {}: {e}", file.source.display()))
        })?;
        let relative = entry
            .path()
            .strip_prefix(&file.source)
            .unwrap_or(entry.path());
        let Some(relative) = relative.to_str() else {
            return Err(file
                .at
                .error(format!("{} is not a UTF-8 name", entry.path().display()))
                .into());
        };
        // Folders of the source are already in the tree by now (name order),
        // so the key needs no resolving: it is a plain path under the target.
        let key = format!("{target}/{relative}");
        let kind = entry.file_type();
        let node = if kind.is_dir() {
            dir(0o755)
        } else if kind.is_file() {
            let meta = entry.metadata().map_err(|e| {
                file.at
                    .error(format!("cannot read {}: {e}", entry.path().display()))
            })?;
            Node {
                kind: NodeKind::File(entry.path().to_path_buf()),
                mode: file.mode.unwrap_or_else(|| default_mode(&meta)),
                uid,
                gid,
            }
        } else if kind.is_symlink() {
            let link = read_link(entry.path()).map_err(|e| file.at.error(e))?;
            Node {
                kind: NodeKind::Symlink(link),
                mode: 0o777,
                uid,
                gid,
            }
        } else {
            return Err(file
                .at
                .error(format!(
                    "{} is neither a file, a folder nor a symlink",
                    entry.path().display()
                ))
                .into());
        };
        tree.insert(&key, node);
    }
    Ok(())
}

/// A symlink's target as text.
fn read_link(path: &Path) -> Result<String, String> {
    let link = fs::read_link(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    link.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} points at a name that is not UTF-8", path.display()))
}

/// 0755 for a file its owner may run, else 0644: the one bit a checkout keeps.
fn default_mode(meta: &fs::Metadata) -> u32 {
    if meta.permissions().mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::parse;

    /// The recipe folder: a config file, a script and a web folder with a
    /// subfolder and a symlink.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("site.conf"), "server {}\n").unwrap();
        fs::write(p.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(p.join("html/css")).unwrap();
        fs::write(p.join("html/index.html"), "hi\n").unwrap();
        fs::set_permissions(p.join("html/index.html"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(p.join("html/css/a.css"), "a{}\n").unwrap();
        std::os::unix::fs::symlink("index.html", p.join("html/home.html")).unwrap();
        dir
    }

    fn files(dir: &Path, entries: &str) -> Vec<FileCopy> {
        let recipe = format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\nfiles = [\n{entries}\n]\n"
        );
        parse(&dir.join("r.toml"), &recipe).unwrap().containers[0]
            .files
            .clone()
    }

    /// A container root with Debian's www-data and a symlinked sites-enabled entry.
    fn debian_root(staging: &Path) -> Tree {
        let mut tree = Tree::new(staging);
        tree.add_bytes(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
            0o644,
        )
        .unwrap();
        tree.add_bytes("etc/group", b"root:x:0:\nwww-data:x:33:\n", 0o644)
            .unwrap();
        tree.add_bytes("etc/nginx/sites-available/default", b"debian's\n", 0o644)
            .unwrap();
        tree.add_symlink(
            "etc/nginx/sites-enabled/default",
            "../sites-available/default",
        );
        tree.add_bytes("var/www/html/index.nginx-debian.html", b"debian\n", 0o644)
            .unwrap();
        // A link out of the root: followed inside it, never out of it.
        tree.add_symlink("srv", "/../../../tmp/escape");
        tree
    }

    fn node<'a>(tree: &'a Tree, key: &str) -> &'a Node {
        tree.get(key).unwrap_or_else(|| panic!("{key} missing"))
    }

    #[test]
    fn files_and_folders_land_with_mode_and_owner() {
        let dir = folder();
        let staging = tempfile::tempdir().unwrap();
        let mut tree = debian_root(staging.path());
        let entries = files(
            dir.path(),
            "{ source = \"site.conf\", target = \"/etc/nginx/sites-enabled/default\", owner = \"root:www-data\", mode = 0o640 },\n\
             { source = \"html\", target = \"/var/www/html\", owner = \"www-data\" },\n\
             { source = \"run.sh\", target = \"/usr/local/bin/run\" },",
        );
        copy_into(&mut tree, &entries).unwrap();
        let site = node(&tree, "etc/nginx/sites-enabled/default");
        assert_eq!(site.kind, NodeKind::File(dir.path().join("site.conf")));
        assert_eq!((site.mode, site.uid, site.gid), (0o640, 0, 33));
        // Debian's own file is kept: the link was replaced, not followed.
        assert!(tree.get("etc/nginx/sites-available/default").is_some());
        let index = node(&tree, "var/www/html/index.html");
        assert_eq!((index.mode, index.uid, index.gid), (0o644, 33, 33));
        let css = node(&tree, "var/www/html/css");
        assert_eq!(
            (css.kind.clone(), css.mode, css.uid),
            (NodeKind::Dir, 0o755, 33)
        );
        assert_eq!(node(&tree, "var/www/html/css/a.css").mode, 0o644);
        assert_eq!(
            node(&tree, "var/www/html/home.html").kind,
            NodeKind::Symlink("index.html".into())
        );
        assert!(
            tree.get("var/www/html/index.nginx-debian.html").is_some(),
            "merged"
        );
        assert_eq!(node(&tree, "usr/local/bin/run").mode, 0o755);
        assert_eq!(node(&tree, "usr/local/bin").kind, NodeKind::Dir);
    }

    #[test]
    fn symlinks_in_the_root_never_lead_out_of_it() {
        let dir = folder();
        let staging = tempfile::tempdir().unwrap();
        let mut tree = debian_root(staging.path());
        let entries = files(
            dir.path(),
            "{ source = \"site.conf\", target = \"/srv/x.conf\" },",
        );
        copy_into(&mut tree, &entries).unwrap();
        // `srv` points at /../../../tmp/escape: the file lands at tmp/escape in the tree.
        assert!(tree.get("tmp/escape/x.conf").is_some());
        assert!(tree.nodes().all(|(k, _)| !k.contains("..")));
    }

    #[test]
    fn unknown_owners_point_at_the_entry() {
        let dir = folder();
        let staging = tempfile::tempdir().unwrap();
        let mut tree = debian_root(staging.path());
        let entries = files(
            dir.path(),
            "{ source = \"site.conf\", target = \"/a\", owner = \"postgres\" },",
        );
        let err = copy_into(&mut tree, &entries).unwrap_err();
        let FilesError::Recipe(err) = err else {
            panic!("{err}")
        };
        assert_eq!(err.location().unwrap().line, 8);
        assert!(
            err.to_string()
                .contains("user \"postgres\" is not in the container's /etc/passwd"),
            "{err}"
        );
        let mut empty = Tree::new(staging.path());
        let err = copy_into(
            &mut empty,
            &files(
                dir.path(),
                "{ source = \"site.conf\", target = \"/a\", owner = \"www-data\" },",
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("has no /etc/passwd"), "{err}");
    }
}
