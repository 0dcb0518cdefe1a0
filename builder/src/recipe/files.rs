//! `files = [...]` of a container or of `[image]`: files and folders from the
//! recipe's folder copied into a root, with a mode and an owner.
//!
//! What is checked here, before anything is built: the source exists; the
//! target is an absolute path in the root that cannot leave it (no `.` or `..`
//! component, nothing the kernel would mount over for the image); the mode fits
//! in the permission bits; the owner is written as `NAME`, `UID`, `UID:GID` or
//! `NAME:GROUP`. Symlinks in the target's folders are followed inside the root
//! the files go into, never out of it (the staging tree resolves every path from
//! its own root), so no symlink can make a file land elsewhere.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Location, RecipeError, Validator};

/// Folders of the image's root a file may not go into: mount points the init
/// covers at boot (so a file there would never be seen) and berth's own.
const IMAGE_RESERVED: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "usr/lib/berth",
    "etc/berth",
    "boot/efi",
];

/// One `files` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    source: Spanned<String>,
    target: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<i64>>,
    #[serde(default)]
    owner: Option<Spanned<String>>,
}

/// A file or folder of the recipe's folder to copy into a root.
#[derive(Debug, Clone)]
pub struct FileCopy {
    /// The host file or folder (resolved against the recipe's folder).
    pub source: PathBuf,
    /// Where it goes: a key of the root's tree (no leading `/`, never `..`).
    pub target: String,
    /// Permission bits of a file (of every file, for a folder); `None`: 0755
    /// when the source is executable by its owner, else 0644.
    pub mode: Option<u32>,
    /// `NAME`, `UID`, `UID:GID` or `NAME:GROUP`, resolved through the root's own
    /// /etc/passwd and /etc/group at build time; `None`: root.
    pub owner: Option<String>,
    /// Where the entry was written, for errors found while copying.
    pub at: Location,
}

/// Which root the files go into: an image's root refuses more targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FilesInto {
    Container,
    Image,
}

impl Validator<'_> {
    /// Checks every entry of one `files` list.
    pub(super) fn files(
        &self,
        raw: Vec<Spanned<RawFile>>,
        into: FilesInto,
    ) -> Result<Vec<FileCopy>, RecipeError> {
        let mut files: Vec<FileCopy> = Vec::new();
        for entry in raw {
            let entry = entry.into_inner();
            let source = self.local_path(&entry.source, "file source")?;
            let target = self.file_target(&entry.target, into)?;
            if files.iter().any(|f| f.target == target) {
                return self.err(
                    &entry.target.span(),
                    format!("two files go to /{target}: each target may be written once"),
                );
            }
            let mode = match &entry.mode {
                Some(m) if !(0..=0o7777).contains(m.get_ref()) => {
                    return self.err(
                        &m.span(),
                        "mode is the permission bits, 0 to 0o7777, written in octal like 0o644",
                    )
                }
                // In range: the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some(m) => Some(*m.get_ref() as u32),
                None => None,
            };
            let owner = match entry.owner {
                Some(o) if !super::container::is_user_spec(o.get_ref()) => {
                    return self.err(
                        &o.span(),
                        format!(
                            "owner {:?} is not NAME, UID, UID:GID or NAME:GROUP",
                            o.get_ref()
                        ),
                    )
                }
                Some(o)
                    if into == FilesInto::Image
                        && !o.get_ref().split(':').all(|p| p.parse::<u32>().is_ok()) =>
                {
                    return self.err(
                        &o.span(),
                        format!(
                            "owner {:?} of an image file must be numeric (UID or UID:GID): the image's root has no /etc/passwd",
                            o.get_ref()
                        ),
                    )
                }
                Some(o) => Some(o.into_inner()),
                None => None,
            };
            files.push(FileCopy {
                source,
                target,
                mode,
                owner,
                at: self.at(&entry.source.span()),
            });
        }
        Ok(files)
    }

    /// An absolute target path, as a tree key; refuses paths that leave the
    /// root or, in the image's root, land where berth or a mount owns the place.
    fn file_target(&self, value: &Spanned<String>, into: FilesInto) -> Result<String, RecipeError> {
        let path = value.get_ref();
        let Some(relative) = path.strip_prefix('/') else {
            return self.err(
                &value.span(),
                format!(
                    "target {path:?} must be an absolute path in the root, like \"/etc/app.conf\""
                ),
            );
        };
        let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return self.err(
                &value.span(),
                format!("target {path:?} has a `.` or `..` component: write the path it means, it may not leave the root"),
            );
        }
        if path.contains('\0') {
            return self.err(&value.span(), "target holds a NUL character");
        }
        if parts.is_empty() {
            return self.err(
                &value.span(),
                "target \"/\" is the root itself: name a file or folder in it",
            );
        }
        let key = parts.join("/");
        if into == FilesInto::Image {
            if let Some(reserved) = IMAGE_RESERVED
                .iter()
                .find(|r| key == **r || key.starts_with(&format!("{r}/")))
            {
                return self.err(
                    &value.span(),
                    format!("target {path:?} is under /{reserved}, which the image's files may not change (a mount point at boot, or berth's own)"),
                );
            }
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::recipe::parse;

    /// A recipe folder with a file `site.conf` and a folder `html/`.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("site.conf"), "server {}\n").unwrap();
        std::fs::create_dir(dir.path().join("html")).unwrap();
        std::fs::write(dir.path().join("html/index.html"), "hi\n").unwrap();
        dir
    }

    fn container_recipe(files: &str) -> String {
        format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\nfiles = [\n{files}\n]\n"
        )
    }

    /// Parses `recipe` as `r.toml` in `dir`.
    fn parse_in(
        dir: &Path,
        recipe: &str,
    ) -> Result<crate::recipe::BuildPlan, crate::recipe::RecipeError> {
        parse(&dir.join("r.toml"), recipe)
    }

    #[test]
    fn files_keep_source_target_mode_and_owner() {
        let dir = folder();
        let plan = parse_in(
            dir.path(),
            &container_recipe(
                "{ source = \"site.conf\", target = \"/etc/nginx/sites-enabled/default\", mode = 0o640, owner = \"root:www-data\" },\n{ source = \"html\", target = \"/var/www/html/\" },",
            ),
        )
        .unwrap();
        let files = &plan.containers[0].files;
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].source, dir.path().join("site.conf"));
        assert_eq!(files[0].target, "etc/nginx/sites-enabled/default");
        assert_eq!(files[0].mode, Some(0o640));
        assert_eq!(files[0].owner.as_deref(), Some("root:www-data"));
        assert_eq!(files[1].target, "var/www/html");
        assert_eq!(files[1].mode, None);
        assert_eq!(files[1].owner, None);
        assert_eq!(files[1].at.line, 9);
    }

    /// The refusal of a container with the one `files` entry `entry` (line 8),
    /// checked to point at `column`.
    fn refusal(entry: &str, column: usize) -> String {
        let dir = folder();
        let err = parse_in(dir.path(), &container_recipe(entry)).expect_err(entry);
        let at = err.location().expect("a located error");
        assert_eq!((at.line, at.column), (8, column), "{err}");
        assert_eq!(at.file, dir.path().join("r.toml"));
        err.to_string()
    }

    #[test]
    fn a_missing_source_is_refused_with_file_line_and_column() {
        let message = refusal("{ source = \"nope.conf\", target = \"/etc/a\" }", 12);
        assert!(message.contains("file source"), "{message}");
        assert!(message.contains("nope.conf does not exist"), "{message}");
        assert!(message.contains("r.toml:8:12"), "{message}");
    }

    #[test]
    fn targets_leaving_the_root_are_refused() {
        for (target, says) in [
            ("/../etc/passwd", "may not leave the root"),
            ("/etc/../../x", "may not leave the root"),
            ("/etc/./x", "may not leave the root"),
            ("etc/x", "must be an absolute path"),
            ("../x", "must be an absolute path"),
            ("/", "the root itself"),
            ("//", "the root itself"),
        ] {
            let entry = format!("{{ source = \"site.conf\", target = \"{target}\" }}");
            let message = refusal(&entry, 34);
            assert!(message.contains(says), "{target}: {message}");
        }
    }

    #[test]
    fn bad_modes_owners_and_twice_the_same_target_are_refused() {
        let message = refusal(
            "{ source = \"site.conf\", target = \"/a\", mode = 0o10000 }",
            47,
        );
        assert!(message.contains("mode is the permission bits"), "{message}");
        let message = refusal("{ source = \"site.conf\", target = \"/a\", mode = -1 }", 47);
        assert!(message.contains("mode is the permission bits"), "{message}");
        let message = refusal(
            "{ source = \"site.conf\", target = \"/a\", owner = \"a:b:c\" }",
            48,
        );
        assert!(message.contains("is not NAME, UID"), "{message}");
        let dir = folder();
        let err = parse_in(
            dir.path(),
            &container_recipe(
                "{ source = \"site.conf\", target = \"/a\" },\n{ source = \"html\", target = \"/a/\" },",
            ),
        )
        .unwrap_err();
        assert_eq!(err.location().unwrap().line, 9, "{err}");
        assert!(err.to_string().contains("two files go to /a"), "{err}");
        let message = refusal("{ source = \"site.conf\", target = \"/a\", mood = 1 }", 40);
        assert!(message.contains("unknown field `mood`"), "{message}");
    }

    #[test]
    fn image_files_stay_out_of_berths_folders_and_mount_points() {
        let dir = folder();
        let recipe = |target: &str, owner: &str| {
            format!("[image]\nname = \"x\"\nversion = \"1.0.0\"\nfiles = [{{ source = \"site.conf\", target = \"{target}\"{owner} }}]\n")
        };
        let plan = parse_in(
            dir.path(),
            &recipe("/etc/ssl/certs/extra.pem", ", owner = \"0:0\""),
        )
        .unwrap();
        assert_eq!(plan.files[0].target, "etc/ssl/certs/extra.pem");
        for target in [
            "/var/x",
            "/usr/lib/berth/containers/c/rootfs/x",
            "/etc/berth/image.toml",
            "/proc",
            "/run/a",
        ] {
            let err = parse_in(dir.path(), &recipe(target, "")).expect_err(target);
            assert_eq!(err.location().unwrap().line, 4, "{err}");
            assert!(
                err.to_string()
                    .contains("which the image's files may not change"),
                "{err}"
            );
        }
        let err = parse_in(dir.path(), &recipe("/etc/a", ", owner = \"www-data\"")).unwrap_err();
        assert!(err.to_string().contains("must be numeric"), "{err}");
    }
}
