//! Values several sections write alike: sizes (`"64M"` or a number of bytes) and
//! durations (`"500ms"`, `"5s"`, `"2m"`).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{RecipeError, Validator};

pub(super) const MIB: u64 = 1024 * 1024;

/// A size as written: a number of bytes or text with a binary unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

impl RawSize {
    /// The size in bytes, or `None` when it is negative or not a size.
    pub(super) fn bytes(&self) -> Option<u64> {
        match self {
            RawSize::Bytes(n) => u64::try_from(*n).ok(),
            RawSize::Text(t) => parse_size(t),
        }
    }
}

impl Validator<'_> {
    pub(super) fn duration(
        &self,
        value: &Spanned<String>,
        what: &str,
    ) -> Result<Duration, RecipeError> {
        parse_duration(value.get_ref()).ok_or_else(|| {
            self.at(&value.span()).error(format!(
                "{what} {:?} is not a duration: write a whole number with ms, s, m or h, like \"500ms\", \"5s\", \"2m\" or \"6h\"",
                value.get_ref()
            ))
        })
    }
}

/// Parses `64M`, `1G`, `512K`, `2T`, `1GiB`, `1048576` into bytes (binary units).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

pub use berth_format::image_config::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 * MIB));
        assert_eq!(parse_size("1G"), Some(1024 * MIB));
        assert_eq!(parse_size("1GiB"), Some(1024 * MIB));
        assert_eq!(parse_size("512K"), Some(512 * 1024));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("64Q"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }
}
