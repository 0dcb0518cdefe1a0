//! A container's cgroup v2 limits: `memory`, `cpus` and `pids`.
//!
//! Each limit is refused in its own words: a memory limit is not a partition, so
//! nothing here speaks of alignment.

use toml::Spanned;

use crate::recipe::units::{RawSize, MIB};
use crate::recipe::{RecipeError, Validator};

/// The smallest memory limit a container may have.
const MIN_MEMORY: u64 = 4 * MIB;

/// A container's cgroup v2 limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// memory.max, in bytes.
    pub memory: Option<u64>,
    /// CPU quota in thousandths of a CPU (cpu.max over a 100 ms period).
    pub millicpus: Option<u64>,
    /// pids.max.
    pub pids: Option<i64>,
}

impl Validator<'_> {
    /// The limits of one container, from its `memory`, `cpus` and `pids` keys.
    pub(super) fn limits(
        &self,
        memory: Option<&Spanned<RawSize>>,
        cpus: Option<&Spanned<f64>>,
        pids: Option<&Spanned<i64>>,
    ) -> Result<Limits, RecipeError> {
        Ok(Limits {
            memory: memory.map(|m| self.memory(m)).transpose()?,
            millicpus: cpus.map(|c| self.cpus(c)).transpose()?,
            pids: pids.map(|p| self.pids(p)).transpose()?,
        })
    }

    /// `memory`: bytes, a whole number of MiB and at least [`MIN_MEMORY`] (as the
    /// recipe documentation says).
    fn memory(&self, value: &Spanned<RawSize>) -> Result<u64, RecipeError> {
        let Some(bytes) = value.get_ref().bytes() else {
            return self.err(
                &value.span(),
                "memory size is not a size: write the most memory the container may use as a whole number with a unit, like \"64M\" or \"1G\"",
            );
        };
        if bytes % MIB != 0 {
            return self.err(
                &value.span(),
                "memory size must be a whole number of MiB, like \"64M\" or \"1536M\"",
            );
        }
        if bytes < MIN_MEMORY {
            return self.err(
                &value.span(),
                format!(
                    "memory size {} MiB is too small: a container may be limited to at least {} MiB",
                    bytes / MIB,
                    MIN_MEMORY / MIB
                ),
            );
        }
        Ok(bytes)
    }

    /// `cpus`: a CPU quota from 0.01 to 1024 CPUs, kept in thousandths.
    fn cpus(&self, value: &Spanned<f64>) -> Result<u64, RecipeError> {
        let cpus = *value.get_ref();
        if !(0.01..=1024.0).contains(&cpus) {
            return self.err(
                &value.span(),
                "cpus is a number of CPUs from 0.01 to 1024, like 0.5",
            );
        }
        // In range: the cast cannot truncate or lose the sign.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok((cpus * 1000.0).round() as u64)
    }

    /// `pids`: the most processes, at least 1.
    fn pids(&self, value: &Spanned<i64>) -> Result<i64, RecipeError> {
        if *value.get_ref() < 1 {
            return self.err(
                &value.span(),
                "pids is the most processes the container may have: at least 1",
            );
        }
        Ok(*value.get_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::recipe::parse;

    /// The message a container with `limit` (one line of TOML) is refused with,
    /// after checking it points at that line.
    fn refusal(limit: &str) -> String {
        let recipe = format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\n{limit}\n"
        );
        let err = parse(Path::new("x.toml"), &recipe).expect_err(limit);
        let at = err.location().expect("a located error");
        assert_eq!(at.line, 7, "{err}");
        err.to_string()
    }

    #[test]
    fn memory_is_refused_as_memory() {
        for (limit, says) in [
            ("memory = \"64Q\"", "memory size is not a size"),
            ("memory = -1", "memory size is not a size"),
            ("memory = \"1M\"", "memory size 1 MiB is too small"),
            ("memory = 0", "memory size 0 MiB is too small"),
            (
                "memory = \"1536K\"",
                "memory size must be a whole number of MiB",
            ),
        ] {
            let message = refusal(limit);
            assert!(message.contains(says), "{limit}: {message}");
            for partition_word in ["partition", "aligned", "FAT32"] {
                assert!(!message.contains(partition_word), "{limit}: {message}");
            }
        }
    }

    #[test]
    fn cpus_are_refused_as_cpus() {
        for limit in ["cpus = 0.0", "cpus = 0.001", "cpus = 2000.0", "cpus = nan"] {
            let message = refusal(limit);
            assert!(
                message.contains("cpus is a number of CPUs from 0.01 to 1024"),
                "{limit}: {message}"
            );
        }
    }

    #[test]
    fn pids_are_refused_as_pids() {
        for limit in ["pids = 0", "pids = -5"] {
            let message = refusal(limit);
            assert!(
                message.contains("pids is the most processes the container may have"),
                "{limit}: {message}"
            );
        }
    }

    #[test]
    fn limits_in_range_are_kept() {
        let recipe = "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\nmemory = 4194304\ncpus = 0.01\npids = 1\n";
        let plan = parse(Path::new("x.toml"), recipe).unwrap();
        let limits = plan.containers[0].limits;
        assert_eq!(limits.memory, Some(4 << 20));
        assert_eq!(limits.millicpus, Some(10));
        assert_eq!(limits.pids, Some(1));
    }
}
