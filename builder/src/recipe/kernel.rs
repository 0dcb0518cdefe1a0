//! `[kernel]`: a Debian kernel package (the default) or a local kernel image and
//! its modules, the extra command line and modules to load early.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Location, RecipeError, Validator};

/// Default Debian kernel package.
pub const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

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
    pub(super) fn kernel(
        &self,
        raw: Option<Spanned<RawKernel>>,
    ) -> Result<KernelPlan, RecipeError> {
        let Some(raw) = raw else {
            return Ok(KernelPlan {
                source: KernelSource::Package {
                    name: DEFAULT_KERNEL_PACKAGE.to_string(),
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
                name: DEFAULT_KERNEL_PACKAGE.to_string(),
                at: self.at(&span),
            },
        };
        let cmdline = match raw.cmdline {
            Some(c) if c.get_ref().contains(['\n', '\r']) => {
                return self.err(&c.span(), "the kernel command line must be one line")
            }
            Some(c) => c.into_inner().trim().to_string(),
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
