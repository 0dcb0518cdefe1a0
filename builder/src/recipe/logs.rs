//! `[logs]`: rotation of the containers' log files.

use berth_format::image_config::LogsConfig;
use serde::Deserialize;
use toml::Spanned;

use super::units::RawSize;
use super::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogs {
    /// Size at which a log file is rotated.
    #[serde(default)]
    max_size: Option<Spanned<RawSize>>,
    /// Rotated files kept.
    #[serde(default)]
    keep: Option<Spanned<i64>>,
}

impl Validator<'_> {
    pub(super) fn logs(&self, raw: Option<RawLogs>) -> Result<LogsConfig, RecipeError> {
        let mut logs = LogsConfig::default();
        let Some(raw) = raw else {
            return Ok(logs);
        };
        if let Some(size) = &raw.max_size {
            let bytes = size.get_ref().bytes();
            match bytes {
                Some(bytes) if bytes >= 4096 => logs.max_size = bytes,
                _ => {
                    return self.err(
                        &size.span(),
                        "logs max_size is a size of at least 4K, like \"1M\"",
                    )
                }
            }
        }
        if let Some(keep) = &raw.keep {
            match u32::try_from(*keep.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => logs.keep = n,
                _ => return self.err(&keep.span(), "logs keep is a number of files from 1 to 100"),
            }
        }
        Ok(logs)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::recipe::parse;

    fn refusal(line: &str) -> String {
        let recipe = format!("[image]\nname = \"x\"\nversion = \"1.0.0\"\n[logs]\n{line}\n");
        let err = parse(Path::new("x.toml"), &recipe).expect_err(line);
        assert_eq!(err.location().map(|at| at.line), Some(5), "{err}");
        err.to_string()
    }

    #[test]
    fn each_limit_is_refused_in_its_own_words() {
        for (line, says) in [
            (
                "max_size = \"1K\"",
                "logs max_size is a size of at least 4K",
            ),
            (
                "max_size = \"big\"",
                "logs max_size is a size of at least 4K",
            ),
            ("keep = 0", "logs keep is a number of files from 1 to 100"),
            ("keep = 101", "logs keep is a number of files from 1 to 100"),
        ] {
            let message = refusal(line);
            assert!(message.contains(says), "{line}: {message}");
        }
    }

    #[test]
    fn limits_in_range_are_kept() {
        let recipe =
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[logs]\nmax_size = 4096\nkeep = 100\n";
        let logs = parse(Path::new("x.toml"), recipe).unwrap().logs;
        assert_eq!((logs.max_size, logs.keep), (4096, 100));
    }
}
