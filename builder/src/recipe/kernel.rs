//! `[kernel]`: a Debian kernel package (the default) or a local kernel image and
//! its modules, the extra command line and modules to load early.

use std::path::PathBuf;

use berth_format::layout::reserved_cmdline_word;
use berth_format::Arch;
use serde::Deserialize;
use toml::Spanned;

use super::{Location, RecipeError, Validator};

/// Default Debian kernel package of x86_64 images.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// The default kernel package of an architecture: Debian's cloud flavour, small
/// and made for virtual machines (virtio, no sound or graphics drivers). Real
/// hardware takes the generic `linux-image-amd64` / `linux-image-arm64`.
pub fn default_kernel_package(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => DEFAULT_KERNEL_PACKAGE,
        Arch::Arm64 => "linux-image-cloud-arm64",
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKernel {
    #[serde(default)]
    package: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    modules_dir: Option<Spanned<String>>,
    #[serde(default)]
    cmdline: Option<Spanned<String>>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
}

/// Which kernel to boot, and how.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    pub source: KernelSource,
    /// Extra kernel command line, appended to berth's own.
    pub cmdline: String,
    /// Extra modules to load in the initramfs, by name.
    pub modules: Vec<String>,
}

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// A Debian package (or a metapackage depending on one).
    Package { name: String, at: Location },
    /// A local kernel image and its `/lib/modules/<version>` folder.
    Local {
        image: PathBuf,
        modules_dir: PathBuf,
    },
}

impl Validator<'_> {
    /// Refuses a word of `[kernel] cmdline` that berth writes itself or that
    /// would change what boots (see [`reserved_cmdline_word`]), pointing at the
    /// word when the string is written without escapes (else at the string).
    fn cmdline_words(&self, cmdline: &Spanned<String>) -> Result<(), RecipeError> {
        let span = cmdline.span();
        let value = cmdline.get_ref();
        // The string's text as written, between its quotes: word offsets in the
        // value are offsets in the file only when it holds no escapes.
        let literal = self
            .source
            .get(span.clone())
            .and_then(|text| text.get(1..text.len().saturating_sub(1)))
            .filter(|inner| *inner == value.as_str());
        let mut offset = 0;
        for word in value.split_ascii_whitespace() {
            let at = offset + value[offset..].find(word).unwrap_or(0);
            offset = at + word.len();
            if let Some(why) = reserved_cmdline_word(word) {
                let word_span = match literal {
                    Some(_) => span.start + 1 + at..span.start + 1 + at + word.len(),
                    None => span.clone(),
                };
                return self.err(
                    &word_span,
                    format!("`{word}` cannot be set in [kernel] cmdline: {why}"),
                );
            }
        }
        Ok(())
    }

    pub(super) fn kernel(
        &self,
        raw: Option<Spanned<RawKernel>>,
        arch: Arch,
    ) -> Result<KernelPlan, RecipeError> {
        let Some(raw) = raw else {
            return Ok(KernelPlan {
                source: KernelSource::Package {
                    name: default_kernel_package(arch).to_string(),
                    at: self.at(&(0..0)),
                },
                cmdline: String::new(),
                modules: Vec::new(),
            });
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let source = match (&raw.package, &raw.path, &raw.modules_dir) {
            (Some(p), Some(_), _) | (Some(p), _, Some(_)) => {
                return self.err(
                    &p.span(),
                    "[kernel] takes either `package` or `path` + `modules_dir`, not both",
                )
            }
            (Some(p), None, None) => KernelSource::Package {
                name: self.package_name(p)?,
                at: self.at(&p.span()),
            },
            (None, Some(image), Some(modules)) => KernelSource::Local {
                image: self.local_path(image, "kernel image")?,
                modules_dir: self.local_path(modules, "kernel modules folder")?,
            },
            (None, Some(image), None) => return self.err(
                &image.span(),
                "a local kernel `path` needs `modules_dir` too (its /lib/modules/<version> folder)",
            ),
            (None, None, Some(m)) => {
                return self.err(&m.span(), "`modules_dir` needs a kernel `path`")
            }
            (None, None, None) => KernelSource::Package {
                name: default_kernel_package(arch).to_string(),
                at: self.at(&span),
            },
        };
        let cmdline = match raw.cmdline {
            Some(c) if c.get_ref().contains(['\n', '\r']) => {
                return self.err(&c.span(), "the kernel command line must be one line")
            }
            Some(c) => {
                self.cmdline_words(&c)?;
                c.into_inner().trim().to_string()
            }
            None => String::new(),
        };
        let mut modules = Vec::new();
        for m in raw.modules {
            let ok = !m.get_ref().is_empty()
                && m.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return self.err(&m.span(), format!("{:?} is not a module name", m.get_ref()));
            }
            modules.push(m.into_inner());
        }
        Ok(KernelPlan {
            source,
            cmdline,
            modules,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse;

    const HEAD: &str = "[image]\nname = \"x\"\nversion = \"1.0.0\"\n";

    #[test]
    fn berths_own_command_line_words_are_refused_at_the_word() {
        for word in [
            "root=/dev/sdb1",
            "init=/bin/sh",
            "rdinit=/bin/sh",
            "panic=0",
            "ro",
            "rw",
            "console=tty0",
            "berth.slot=b",
            "berth.data=PARTUUID=x",
            "berth.verity.roothash=00",
        ] {
            let src = format!("{HEAD}[kernel]\ncmdline = \"quiet {word} loglevel=3\"\n");
            let err = parse(Path::new("r.toml"), &src).unwrap_err();
            let at = err.location().expect("a location");
            // `cmdline = "quiet ` is 17 characters: the word starts at column 18.
            assert_eq!((at.line, at.column), (5, 18), "{word}: {err}");
            assert!(err.to_string().contains(word), "{err}");
            assert!(err.to_string().starts_with("r.toml:5:18:"), "{err}");
        }
    }

    #[test]
    fn other_command_line_words_are_kept() {
        let src = format!("{HEAD}[kernel]\ncmdline = \" quiet loglevel=3 rootwait \"\n");
        let plan = parse(Path::new("r.toml"), &src).unwrap();
        assert_eq!(plan.kernel.cmdline, "quiet loglevel=3 rootwait");
    }

    #[test]
    fn a_refused_word_in_an_escaped_string_points_at_the_string() {
        let src = format!("{HEAD}[kernel]\ncmdline = \"quiet\\tinit=/bin/sh\"\n");
        let err = parse(Path::new("r.toml"), &src).unwrap_err();
        let at = err.location().unwrap();
        assert_eq!((at.line, at.column), (5, 11), "{err}");
    }
}
