//! A container's process limits (`rlimits`) and namespaced kernel settings
//! (`sysctls`), both handed to the OCI runtime in its config.
//!
//! Every container gets [`DEFAULT_NOFILE`] open files unless the recipe says
//! otherwise: Podman's default ("If nofile and nproc are unset, a default value
//! of 1048576 will be used", podman's `docs/source/markdown/options/ulimit.md`),
//! where the kernel's own default for PID 1's children (1024) starves servers
//! that keep a connection per descriptor.

use std::collections::BTreeMap;

use toml::Spanned;

use super::ContainerNetwork;
use crate::recipe::{RecipeError, Validator};

/// Open files, soft and hard, unless the recipe sets `nofile`.
const DEFAULT_NOFILE: u64 = 1_048_576;
/// The most open files the kernel allows a process (`fs.nr_open`'s default):
/// a higher `nofile` would make the runtime's setrlimit fail at every start.
const NR_OPEN: u64 = 1_048_576;

/// The resources of setrlimit(2), as written in a recipe (without `RLIMIT_`).
const RLIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// sysctls that belong to a container's IPC namespace (it always has its own).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// One process limit: `RLIMIT_<NAME>` with its soft and hard values
/// (`u64::MAX` is unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, …
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// One `rlimits` value: a number (soft and hard alike) or `"SOFT:HARD"`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(in crate::recipe) enum RawRlimit {
    Number(i64),
    Text(String),
}

/// One `sysctls` value: kernels take text, numbers are written as numbers.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(in crate::recipe) enum RawSysctl {
    Number(i64),
    Text(String),
}

impl Validator<'_> {
    /// The container's limits: the default `nofile`, then the recipe's, sorted
    /// by name (so the config's bytes do not depend on the recipe's order).
    pub(super) fn rlimits(
        &self,
        raw: &BTreeMap<Spanned<String>, Spanned<RawRlimit>>,
    ) -> Result<Vec<Rlimit>, RecipeError> {
        let mut limits: BTreeMap<String, Rlimit> = BTreeMap::new();
        limits.insert(
            "RLIMIT_NOFILE".into(),
            Rlimit {
                name: "RLIMIT_NOFILE".into(),
                soft: DEFAULT_NOFILE,
                hard: DEFAULT_NOFILE,
            },
        );
        for (key, value) in raw {
            let short = key.get_ref().to_ascii_lowercase();
            let short = short.strip_prefix("rlimit_").unwrap_or(&short).to_string();
            if !RLIMITS.contains(&short.as_str()) {
                return self.err(
                    &key.span(),
                    format!(
                        "{:?} is not a process limit: use one of {}",
                        key.get_ref(),
                        RLIMITS.join(", ")
                    ),
                );
            }
            let bad = |why: &str| {
                self.at(&value.span()).error(format!(
                    "{short} = {}: {why}",
                    match value.get_ref() {
                        RawRlimit::Number(n) => n.to_string(),
                        RawRlimit::Text(t) => format!("{t:?}"),
                    }
                ))
            };
            let (soft, hard) = match value.get_ref() {
                RawRlimit::Number(n) => {
                    let n = u64::try_from(*n).map_err(|_| bad("a limit is not negative"))?;
                    (n, n)
                }
                RawRlimit::Text(text) => {
                    let one = |part: &str| match part.trim() {
                        "unlimited" | "infinity" => Some(u64::MAX),
                        part => part.parse::<u64>().ok(),
                    };
                    let parsed = match text.split_once(':') {
                        Some((s, h)) => one(s).zip(one(h)),
                        None => one(text).map(|n| (n, n)),
                    };
                    parsed.ok_or_else(|| {
                        bad("write a number (soft and hard), \"SOFT:HARD\" or \"unlimited\"")
                    })?
                }
            };
            if soft > hard {
                return Err(bad("the soft limit is above the hard one"));
            }
            if short == "nofile" && hard > NR_OPEN {
                return Err(bad(&format!(
                    "the kernel allows at most {NR_OPEN} open files (fs.nr_open)"
                )));
            }
            let name = format!("RLIMIT_{}", short.to_ascii_uppercase());
            limits.insert(name.clone(), Rlimit { name, soft, hard });
        }
        Ok(limits.into_values().collect())
    }

    /// Namespaced sysctls: `net.*` in a container's own network namespace
    /// (with the host's network they would change the device's), and the IPC
    /// namespace's `kernel.msg*`, `kernel.sem`, `kernel.shm*` and `fs.mqueue.*`.
    pub(super) fn sysctls(
        &self,
        raw: &BTreeMap<Spanned<String>, Spanned<RawSysctl>>,
        network: ContainerNetwork,
    ) -> Result<BTreeMap<String, String>, RecipeError> {
        let mut sysctls = BTreeMap::new();
        for (key, value) in raw {
            let name = key.get_ref().replace('/', ".");
            let well_formed = name.split('.').count() >= 2
                && name.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if !well_formed {
                return self.err(
                    &key.span(),
                    format!(
                        "{:?} is not a sysctl name (dotted, like \"net.ipv4.ip_forward\")",
                        key.get_ref()
                    ),
                );
            }
            let ipc = IPC_SYSCTLS.contains(&name.as_str()) || name.starts_with("fs.mqueue.");
            if name.starts_with("net.") {
                if network == ContainerNetwork::Host {
                    return self.err(
                        &key.span(),
                        format!("{name} would change the device's own network: net.* sysctls need the container's own network (network = \"none\")"),
                    );
                }
            } else if !ipc {
                return self.err(
                    &key.span(),
                    format!("{name} is not namespaced: a container may set net.* and its IPC namespace's kernel.msg*, kernel.sem, kernel.shm* and fs.mqueue.*, the rest is the device's"),
                );
            }
            let text = match value.get_ref() {
                RawSysctl::Number(n) => n.to_string(),
                RawSysctl::Text(t) => t.clone(),
            };
            if text.trim().is_empty() || text.contains(['\n', '\0']) {
                return self.err(
                    &value.span(),
                    format!("the value of {name} must be one line of text, not empty"),
                );
            }
            sysctls.insert(name, text);
        }
        Ok(sysctls)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::recipe::parse;

    fn recipe(lines: &str) -> String {
        format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\n{lines}\n"
        )
    }

    /// The refusal of `lines`, checked to point at line 7, column `column`.
    fn refusal(lines: &str, column: usize) -> String {
        let err = parse(Path::new("x.toml"), &recipe(lines)).expect_err(lines);
        let at = err.location().expect("a located error");
        assert_eq!((at.line, at.column), (7, column), "{err}");
        err.to_string()
    }

    fn nofile(soft: u64, hard: u64) -> Rlimit {
        Rlimit {
            name: "RLIMIT_NOFILE".into(),
            soft,
            hard,
        }
    }

    #[test]
    fn every_container_gets_podmans_open_file_limit() {
        let plan = parse(Path::new("x.toml"), &recipe("")).unwrap();
        assert_eq!(plan.containers[0].rlimits, vec![nofile(1 << 20, 1 << 20)]);
    }

    #[test]
    fn rlimits_take_numbers_pairs_and_unlimited() {
        let plan = parse(
            Path::new("x.toml"),
            &recipe("rlimits = { nofile = \"1024:65536\", RLIMIT_CORE = 0, memlock = \"unlimited\", stack = \"8388608:unlimited\" }"),
        )
        .unwrap();
        let limits = &plan.containers[0].rlimits;
        assert_eq!(
            limits,
            &vec![
                Rlimit {
                    name: "RLIMIT_CORE".into(),
                    soft: 0,
                    hard: 0
                },
                Rlimit {
                    name: "RLIMIT_MEMLOCK".into(),
                    soft: u64::MAX,
                    hard: u64::MAX
                },
                nofile(1024, 65536),
                Rlimit {
                    name: "RLIMIT_STACK".into(),
                    soft: 8_388_608,
                    hard: u64::MAX
                },
            ]
        );
    }

    #[test]
    fn bad_rlimits_are_refused_where_written() {
        let m = refusal("rlimits = { files = 10 }", 13);
        assert!(
            m.contains("\"files\" is not a process limit: use one of as, core"),
            "{m}"
        );
        let m = refusal("rlimits = { nofile = \"2048:1024\" }", 22);
        assert!(m.contains("the soft limit is above the hard one"), "{m}");
        let m = refusal("rlimits = { nofile = 2000000 }", 22);
        assert!(m.contains("at most 1048576 open files"), "{m}");
        let m = refusal("rlimits = { nproc = -1 }", 21);
        assert!(m.contains("not negative"), "{m}");
        let m = refusal("rlimits = { nproc = \"lots\" }", 21);
        assert!(m.contains("\"SOFT:HARD\""), "{m}");
        let m = refusal("rlimits = { nproc = \"1:\" }", 21);
        assert!(m.contains("\"SOFT:HARD\""), "{m}");
    }

    #[test]
    fn namespaced_sysctls_are_kept() {
        let plan = parse(
            Path::new("x.toml"),
            &recipe("network = \"none\"\nsysctls = { \"net.ipv4.ip_unprivileged_port_start\" = 0, \"net/core/somaxconn\" = \"1024\", \"kernel.shmmax\" = \"65536\", \"fs.mqueue.msg_max\" = 20 }"),
        )
        .unwrap();
        let sysctls: Vec<(&str, &str)> = plan.containers[0]
            .sysctls
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            sysctls,
            [
                ("fs.mqueue.msg_max", "20"),
                ("kernel.shmmax", "65536"),
                ("net.core.somaxconn", "1024"),
                ("net.ipv4.ip_unprivileged_port_start", "0"),
            ]
        );
    }

    #[test]
    fn sysctls_outside_the_containers_namespaces_are_refused() {
        let m = refusal("sysctls = { \"net.ipv4.ip_forward\" = 1 }", 13);
        assert!(m.contains("would change the device's own network"), "{m}");
        let m = refusal("sysctls = { \"kernel.hostname\" = \"x\" }", 13);
        assert!(m.contains("kernel.hostname is not namespaced"), "{m}");
        let m = refusal("sysctls = { \"vm.swappiness\" = 1 }", 13);
        assert!(m.contains("is not namespaced"), "{m}");
        let m = refusal("sysctls = { \"net..x\" = 1 }", 13);
        assert!(m.contains("is not a sysctl name"), "{m}");
        let m = refusal("sysctls = { \"kernel.sem\" = \"\" }", 28);
        assert!(m.contains("must be one line of text"), "{m}");
    }
}
