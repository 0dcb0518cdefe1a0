//! Image versions: semantic versions (semver 2.0.0) ordered by precedence.
//!
//! Parsed here rather than by wrapping the `semver` crate: its `Ord` and `Eq`
//! include build metadata, which semver precedence ignores, so a wrapper would
//! re-implement the comparison anyway; the rules are short; and the static
//! device agent carries no extra crate. The text is kept as written, so
//! [`Display`](fmt::Display) and serde give back exactly what was parsed (the
//! signed manifest's bytes do not change).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A text that is not a semantic version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]): {reason}")]
pub struct VersionError {
    /// The text that did not parse.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An image version: `MAJOR.MINOR.PATCH`, optionally `-PRERELEASE` and
/// `+BUILD`, as semver 2.0.0 defines them.
///
/// Ordered and compared by semver precedence: `1.2.0-rc.1 < 1.2.0`,
/// pre-release identifiers compared one by one (numbers numerically, below
/// alphanumerics), build metadata ignored (`1.2.0+a == 1.2.0+b`).
#[derive(Debug, Clone)]
pub struct ImageVersion {
    text: String,
    major: u64,
    minor: u64,
    patch: u64,
    /// Byte range of the pre-release in `text` (empty for a release).
    pre: (usize, usize),
}

impl ImageVersion {
    /// Parses a semantic version; see [`VersionError`] for what is refused.
    pub fn parse(text: &str) -> Result<ImageVersion, VersionError> {
        let bad = |reason: &'static str| VersionError {
            text: text.to_string(),
            reason,
        };
        let (head, build) = match text.split_once('+') {
            Some((head, build)) => (head, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match head.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (head, None),
        };
        let numbers: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = numbers.as_slice() else {
            return Err(bad("it needs exactly three numbers MAJOR.MINOR.PATCH"));
        };
        let number = |n: &str| -> Result<u64, VersionError> {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("MAJOR, MINOR and PATCH must be numbers"));
            }
            if n.len() > 1 && n.starts_with('0') {
                return Err(bad("a number has a leading zero"));
            }
            n.parse().map_err(|_| bad("a number is too large"))
        };
        let (major, minor, patch) = (number(major)?, number(minor)?, number(patch)?);
        let identifiers = |part: &str, what: &'static str| -> Result<(), VersionError> {
            for id in part.split('.') {
                if id.is_empty() {
                    return Err(bad(what));
                }
                if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(bad("identifiers may hold only [0-9A-Za-z-]"));
                }
            }
            Ok(())
        };
        if let Some(pre) = pre {
            identifiers(pre, "the pre-release has an empty identifier")?;
            if pre
                .split('.')
                .any(|id| id.len() > 1 && id.starts_with('0') && is_numeric(id))
            {
                return Err(bad("a numeric pre-release identifier has a leading zero"));
            }
        }
        if let Some(build) = build {
            identifiers(build, "the build metadata has an empty identifier")?;
        }
        let pre = match pre {
            Some(p) => (core.len() + 1, core.len() + 1 + p.len()),
            None => (core.len(), core.len()),
        };
        Ok(ImageVersion {
            text: text.to_string(),
            major,
            minor,
            patch,
            pre,
        })
    }

    /// The text as parsed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// MAJOR.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// MINOR.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// PATCH.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// The pre-release (`rc.1` of `1.2.0-rc.1`), empty for a release.
    pub fn pre_release(&self) -> &str {
        &self.text[self.pre.0..self.pre.1]
    }

    /// The build metadata (`b5` of `1.2.0+b5`), empty when there is none.
    pub fn build(&self) -> &str {
        self.text.split_once('+').map_or("", |(_, build)| build)
    }

    /// Whether this is a pre-release.
    pub fn is_pre_release(&self) -> bool {
        !self.pre_release().is_empty()
    }
}

fn is_numeric(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_digit())
}

/// Precedence of two pre-release identifiers (semver 2.0.0, rule 11.4).
fn cmp_identifier(a: &str, b: &str) -> Ordering {
    match (is_numeric(a), is_numeric(b)) {
        // No leading zeros: the longer number is the larger (no overflow).
        (true, true) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

impl Ord for ImageVersion {
    fn cmp(&self, other: &ImageVersion) -> Ordering {
        let core =
            (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre_release(), other.pre_release()) {
            ("", "") => Ordering::Equal,
            // A release is above its pre-releases.
            ("", _) => Ordering::Greater,
            (_, "") => Ordering::Less,
            (a, b) => {
                let mut a = a.split('.');
                let mut b = b.split('.');
                loop {
                    match (a.next(), b.next()) {
                        (None, None) => return Ordering::Equal,
                        (None, Some(_)) => return Ordering::Less,
                        (Some(_), None) => return Ordering::Greater,
                        (Some(x), Some(y)) => match cmp_identifier(x, y) {
                            Ordering::Equal => {}
                            other => return other,
                        },
                    }
                }
            }
        }
    }
}

impl PartialOrd for ImageVersion {
    fn partial_cmp(&self, other: &ImageVersion) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Equal precedence: build metadata is ignored.
impl PartialEq for ImageVersion {
    fn eq(&self, other: &ImageVersion) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ImageVersion {}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ImageVersion {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<ImageVersion, VersionError> {
        ImageVersion::parse(text)
    }
}

impl Serialize for ImageVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ImageVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ImageVersion, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImageVersion::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> ImageVersion {
        ImageVersion::parse(text).unwrap()
    }

    #[test]
    fn semantic_versions_parse_and_keep_their_text() {
        for good in [
            "1.0.0",
            "0.0.1",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0+build.5",
            "1.0.0-a-b+c",
            "1.0.0-0.3.7",
            "1.0.0-x.7.z.92",
            "1.0.0+001",
            "1.0.0-alpha+exp.sha.5114f85",
            "18446744073709551615.0.0",
        ] {
            let parsed = v(good);
            assert_eq!(parsed.to_string(), good);
            assert_eq!(parsed.as_str(), good);
        }
        let full = v("1.2.3-rc.1+b5");
        assert_eq!(
            (full.major(), full.minor(), full.patch()),
            (1, 2, 3),
            "{full}"
        );
        assert_eq!(full.pre_release(), "rc.1");
        assert_eq!(full.build(), "b5");
        assert!(full.is_pre_release());
        assert!(!v("1.2.3+b-5").is_pre_release());
        assert_eq!(v("1.2.3+b-5").build(), "b-5");
    }

    #[test]
    fn what_is_not_semver_2_is_refused_with_the_reason() {
        for (bad, reason) in [
            ("", "three numbers"),
            ("1", "three numbers"),
            ("1.0", "three numbers"),
            ("1.0.0.0", "three numbers"),
            ("v1.0.0", "must be numbers"),
            (" 1.0.0", "must be numbers"),
            ("1.0.x", "must be numbers"),
            ("1..0", "must be numbers"),
            ("1.00.0", "leading zero"),
            ("1.0.0-", "empty identifier"),
            ("1.0.0+", "empty identifier"),
            ("1.0.0-rc..1", "empty identifier"),
            ("1.0.0-rc.01", "leading zero"),
            ("1.0.0-rc_1", "[0-9A-Za-z-]"),
            ("1.0.0+b+c", "[0-9A-Za-z-]"),
            ("18446744073709551616.0.0", "too large"),
        ] {
            let err = ImageVersion::parse(bad).unwrap_err();
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains(reason), "{bad}: {err}");
        }
    }

    #[test]
    fn versions_are_ordered_by_semver_precedence() {
        // Ascending, from semver 2.0.0's own examples and the rc-before-release
        // case strverscmp gets wrong.
        let ascending = [
            "0.9.9",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0-alpha",
            "1.2.0-alpha.1",
            "1.2.0-beta",
            "1.2.0-rc.1",
            "1.2.0-rc.2",
            "1.2.0-rc.10",
            "1.2.0",
            "1.2.1",
            "1.10.0",
            "2.0.0-0",
            "2.0.0-1",
            "2.0.0-9",
            "2.0.0-10",
            "2.0.0-a",
            "2.0.0",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                assert_eq!(v(a).cmp(&v(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert!(v("1.2.0-rc.1") < v("1.2.0"));
    }

    #[test]
    fn build_metadata_is_ignored_for_order_and_equality() {
        assert_eq!(v("1.2.0+a"), v("1.2.0+b"));
        assert_eq!(v("1.2.0+a").cmp(&v("1.2.0")), Ordering::Equal);
        assert_eq!(v("1.2.0-rc.1+x"), v("1.2.0-rc.1+y"));
        assert!(v("1.2.0-rc.1+zzz") < v("1.2.0+aaa"));
        // The text is kept all the same.
        assert_eq!(v("1.2.0+a").to_string(), "1.2.0+a");
    }

    #[test]
    fn serde_uses_the_exact_text() {
        let parsed: ImageVersion = serde_json::from_str("\"1.2.0-rc.1+b5\"").unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "\"1.2.0-rc.1+b5\"");
        let err = serde_json::from_str::<ImageVersion>("\"1.2\"").unwrap_err();
        assert!(err.to_string().contains("not a semantic version"), "{err}");
        assert!(serde_json::from_str::<ImageVersion>("12").is_err());
    }
}
