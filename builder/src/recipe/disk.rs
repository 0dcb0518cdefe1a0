//! `[disk]`: partition sizes, each a whole number of MiB.

use serde::Deserialize;
use toml::Spanned;

use super::units::{RawSize, MIB};
use super::{RecipeError, Validator};

/// FAT32 needs at least 65525 clusters; with 512-byte clusters that is ~33 MiB.
const MIN_ESP: u64 = 34 * MIB;
const MIN_ROOT: u64 = 8 * MIB;
const MIN_DATA: u64 = 8 * MIB;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    #[serde(default)]
    esp: Option<Spanned<RawSize>>,
    #[serde(default)]
    root: Option<Spanned<RawSize>>,
    #[serde(default)]
    data: Option<Spanned<RawSize>>,
}

/// Sizes of the partitions, in bytes, each a whole number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSizes {
    pub esp: u64,
    pub root: u64,
    pub data: u64,
}

impl Default for DiskSizes {
    fn default() -> Self {
        DiskSizes {
            esp: 128 * MIB,
            root: 256 * MIB,
            data: 256 * MIB,
        }
    }
}

impl Validator<'_> {
    pub(super) fn disk(&self, raw: Option<RawDisk>) -> Result<DiskSizes, RecipeError> {
        let mut sizes = DiskSizes::default();
        let Some(raw) = raw else { return Ok(sizes) };
        if let Some(esp) = raw.esp {
            sizes.esp = self.partition_size(&esp, "esp", MIN_ESP)?;
        }
        if let Some(root) = raw.root {
            sizes.root = self.partition_size(&root, "root", MIN_ROOT)?;
        }
        if let Some(data) = raw.data {
            sizes.data = self.partition_size(&data, "data", MIN_DATA)?;
        }
        Ok(sizes)
    }

    /// One partition's size: a whole number of MiB (partitions are 1 MiB
    /// aligned) and at least `min`.
    fn partition_size(
        &self,
        value: &Spanned<RawSize>,
        what: &str,
        min: u64,
    ) -> Result<u64, RecipeError> {
        let bytes = value.get_ref().bytes();
        let Some(bytes) = bytes else {
            return self.err(
                &value.span(),
                format!("{what} size is not a size: write a whole number with a unit, like \"64M\" or \"1G\""),
            );
        };
        if bytes % MIB != 0 {
            return self.err(
                &value.span(),
                format!("{what} size must be a whole number of MiB (partitions are 1 MiB aligned)"),
            );
        }
        if bytes < min {
            let why = if what == "esp" {
                " (FAT32 needs at least 65525 clusters)"
            } else {
                ""
            };
            return self.err(
                &value.span(),
                format!(
                    "{what} size {} MiB is too small: at least {} MiB{why}",
                    bytes / MIB,
                    min / MIB
                ),
            );
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::recipe::{parse, DiskSizes};

    fn disk(table: &str) -> Result<DiskSizes, String> {
        let recipe = format!("[image]\nname = \"x\"\nversion = \"1.0.0\"\n[disk]\n{table}\n");
        parse(Path::new("x.toml"), &recipe)
            .map(|plan| plan.disk)
            .map_err(|e| {
                assert_eq!(e.location().map(|at| at.line), Some(5), "{e}");
                e.to_string()
            })
    }

    #[test]
    fn each_partition_is_refused_in_its_own_name() {
        for (table, says) in [
            ("esp = \"16M\"", "esp size 16 MiB is too small: at least 34 MiB (FAT32 needs at least 65525 clusters)"),
            ("root = \"4M\"", "root size 4 MiB is too small: at least 8 MiB"),
            ("data = \"1M\"", "data size 1 MiB is too small: at least 8 MiB"),
            ("root = \"1500K\"", "root size must be a whole number of MiB (partitions are 1 MiB aligned)"),
            ("data = \"lots\"", "data size is not a size"),
            ("esp = -64", "esp size is not a size"),
        ] {
            let message = disk(table).expect_err(table);
            assert!(message.contains(says), "{table}: {message}");
        }
    }

    #[test]
    fn sizes_in_bytes_or_units() {
        let sizes = disk("esp = \"64M\"\nroot = 1073741824\ndata = \"1G\"").unwrap();
        assert_eq!(
            sizes,
            DiskSizes {
                esp: 64 << 20,
                root: 1 << 30,
                data: 1 << 30
            }
        );
    }
}
