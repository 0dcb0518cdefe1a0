//! Broken recipes: each is refused with a message that names the file, the line and
//! what is wrong. Errors found offline (by the parser and validator) are checked
//! here; the ones that need apt (unknown package) are in `sources.rs`.

use std::path::Path;

use berth_builder::recipe::{parse, RecipeError};

const HEAD: &str = "[image]\nname = \"x\"\nversion = \"1.0.0\"\n";

/// (what, recipe text, line the error must point at, words the message must say)
fn cases() -> Vec<(&'static str, String, usize, &'static str)> {
    let c = |body: &str| format!("{HEAD}{body}");
    vec![
        (
            "unknown key",
            c("[disk]\nesp = \"64M\"\nswap = \"1G\"\n"),
            6,
            "unknown field `swap`",
        ),
        (
            "unknown table",
            c("[kernal]\npackage = \"linux-image-cloud-amd64\"\n"),
            4,
            "unknown field `kernal`",
        ),
        (
            "bad size",
            c("[disk]\nroot = \"64Q\"\n"),
            5,
            "root size is not a size",
        ),
        (
            "fractional size",
            c("[disk]\ndata = \"1.5G\"\n"),
            5,
            "data size is not a size",
        ),
        (
            "ESP too small for FAT32",
            c("[disk]\nesp = \"16M\"\n"),
            5,
            "esp size 16 MiB is too small",
        ),
        (
            "size not in MiB",
            c("[disk]\nroot = 1000\n"),
            5,
            "whole number of MiB",
        ),
        (
            "duplicate container name",
            c("[[container]]\nname = \"a\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/busybox\"]\n\n[[container]]\nname = \"a\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/busybox\"]\n"),
            10,
            "duplicate container name \"a\"",
        ),
        (
            "missing local kernel",
            c("[kernel]\npath = \"no-such-vmlinuz\"\nmodules_dir = \"no-such-dir\"\n"),
            5,
            "does not exist",
        ),
        (
            "kernel package and path",
            c("[kernel]\npackage = \"linux-image-amd64\"\npath = \"vmlinuz\"\n"),
            5,
            "either `package` or `path`",
        ),
        (
            "registry reference with capitals",
            c("[[container]]\nname = \"a\"\nimage = \"127.0.0.1:5000/Team/App:1\"\n"),
            6,
            "is not valid",
        ),
        (
            "registry reference with a short digest",
            c("[[container]]\nname = \"a\"\nimage = \"127.0.0.1:5000/app@sha256:abc\"\n"),
            6,
            "is not valid",
        ),
        (
            "image transport berth does not know",
            c("[[container]]\nname = \"a\"\nimage = \"containers-storage:app\"\n"),
            6,
            "unsupported image reference",
        ),
        (
            "missing docker archive",
            c("[[container]]\nname = \"a\"\nimage = \"docker-archive:/nonexistent/app.tar\"\n"),
            6,
            "docker archive /nonexistent/app.tar does not exist",
        ),
        (
            "docker archive that is a folder",
            c("[[container]]\nname = \"a\"\nimage = \"docker-archive:/\"\n"),
            6,
            "docker archive / is not a file",
        ),
        (
            "registry table named by URL",
            c("[registry.\"https://registry.example.org\"]\ninsecure = true\n"),
            4,
            "is not HOST or HOST:PORT",
        ),
        (
            "insecure is not a boolean",
            c("[registry.\"localhost:5000\"]\ninsecure = \"yes\"\n"),
            5,
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "unknown registry setting",
            c("[registry.\"localhost:5000\"]\ntls = false\n"),
            5,
            "unknown field `tls`",
        ),
        (
            "bad container user",
            c("[[container]]\nname = \"a\"\nimage = \"127.0.0.1:5000/app:1\"\nuser = \"web server\"\n"),
            7,
            "is not NAME, UID, UID:GID or NAME:GROUP",
        ),
        (
            "missing OCI layout",
            c("[[container]]\nname = \"a\"\nimage = \"oci:/nonexistent/layout:1\"\n"),
            6,
            "does not exist",
        ),
        (
            "bad package name",
            c("[[container]]\nname = \"a\"\npackages = [\"Busybox Static\"]\ncommand = [\"sh\"]\n"),
            6,
            "not a Debian package name",
        ),
        (
            "unknown restart policy",
            c("[[container]]\nname = \"a\"\npackages = [\"busybox-static\"]\ncommand = [\"sh\"]\nrestart = \"sometimes\"\n"),
            8,
            "unknown variant `sometimes`",
        ),
        (
            "no root filesystem source",
            c("[[container]]\nname = \"a\"\ncommand = [\"sh\"]\n"),
            4,
            "needs a root filesystem",
        ),
        (
            "packages without command",
            c("[[container]]\nname = \"a\"\npackages = [\"busybox-static\"]\n"),
            5,
            "has no `command`",
        ),
        (
            "version not semver",
            "[image]\nname = \"x\"\nversion = \"1.0\"\n".to_string(),
            3,
            "not a semantic version",
        ),
        (
            "bad image name",
            "[image]\nname = \"My Image\"\nversion = \"1.0.0\"\n".to_string(),
            2,
            "image name \"My Image\" is not valid",
        ),
        (
            "missing version",
            "[image]\nname = \"x\"\n".to_string(),
            1,
            "missing field `version`",
        ),
        (
            "bad TOML",
            c("[[container]\nname = \"a\"\n"),
            4,
            "",
        ),
        (
            "bad address",
            c("[network]\nipv4 = { address = \"10.0.2.300/24\" }\n"),
            5,
            "not an IPv4 address with a prefix length",
        ),
        (
            "dhcp and a static address",
            c("[network]\nipv4 = { address = \"10.0.2.15/24\" }\ndhcp = true\n"),
            6,
            "exclude each other",
        ),
        (
            "dhcp not a boolean",
            c("[network]\ndhcp = \"no\"\n"),
            5,
            "",
        ),
        (
            "relative workdir",
            c("[[container]]\nname = \"a\"\npackages = [\"busybox-static\"]\ncommand = [\"sh\"]\nworkdir = \"srv\"\n"),
            8,
            "absolute path",
        ),
        (
            "health check with two kinds",
            c(&format!("{WEB}health = {{ tcp = 80, http = \"http://127.0.0.1/\" }}\n")),
            8,
            "exactly one of `exec`, `http` and `tcp`",
        ),
        (
            "health check with no kind",
            c(&format!("{WEB}health = {{ interval = \"5s\" }}\n")),
            8,
            "needs one of `exec",
        ),
        (
            "health check to another host",
            c(&format!("{WEB}health = {{ http = \"http://10.0.2.2:80/\" }}\n")),
            8,
            "must name 127.0.0.1 or localhost",
        ),
        (
            "https health check",
            c(&format!("{WEB}health = {{ http = \"https://127.0.0.1/\" }}\n")),
            8,
            "must start with http://",
        ),
        (
            "health check port out of range",
            c(&format!("{WEB}health = {{ tcp = 70000 }}\n")),
            8,
            "a port is a number from 1 to 65535",
        ),
        (
            "empty exec health check",
            c(&format!("{WEB}health = {{ exec = [] }}\n")),
            8,
            "`exec` is empty",
        ),
        (
            "bad health interval",
            c(&format!("{WEB}health = {{ tcp = 80, interval = \"5\" }}\n")),
            8,
            "interval \"5\" is not a duration",
        ),
        (
            "zero retries",
            c(&format!("{WEB}health = {{ tcp = 80, retries = 0 }}\n")),
            8,
            "retries must be a whole number from 1 to 100",
        ),
        (
            "unknown health key",
            c(&format!("{WEB}health = {{ tcp = 80, grace = \"5s\" }}\n")),
            8,
            "unknown field `grace`",
        ),
        (
            "critical is a boolean",
            c(&format!("{WEB}critical = \"yes\"\n")),
            8,
            "invalid type",
        ),
        (
            "container named like a system log",
            c("[[container]]\nname = \"kernel\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/true\"]\n"),
            5,
            "container name \"kernel\" is taken",
        ),
        (
            "bad health_timeout",
            c("[update]\nhealth_timeout = \"1.5m\"\n"),
            5,
            "health_timeout \"1.5m\" is not a duration",
        ),
        (
            "repository without keys",
            c("[update]\nrepository = \"http://10.0.2.2:8080/repo\"\n"),
            5,
            "a repository needs [update] keys",
        ),
        (
            "CA file missing",
            c("[update]\nca = \"certs/nope.pem\"\n"),
            5,
            "update CA file",
        ),
        (
            "repository not a URL",
            c("[update]\nrepository = \"updates.example/repo\"\n"),
            5,
            "is not an http:// or https:// URL",
        ),
        (
            "bad channel",
            c("[update]\nchannel = \"../stable\"\n"),
            5,
            "channel:",
        ),
        (
            "interval too short",
            c("[update]\ninterval = \"5s\"\n"),
            5,
            "interval must be at least 10 s",
        ),
        (
            "no boot tries",
            c("[update]\ntries = 0\n"),
            5,
            "tries must be 1 to 10, got 0",
        ),
        (
            "too many boot tries",
            c("[update]\ntries = 11\n"),
            5,
            "tries must be 1 to 10, got 11",
        ),
        (
            "bad reboot policy",
            c("[update]\nreboot = \"sometimes\"\n"),
            5,
            "is not \"auto\", \"manual\" or a window",
        ),
        (
            "bad reboot window",
            c("[update]\nreboot_window = \"Mon-Fri 02:00-04:00\"\n"),
            5,
            "expected days, a time range and a UTC offset",
        ),
        (
            "missing update key",
            c("[update]\nkeys = [\"keys/nope.pub\"]\n"),
            5,
            "update key",
        ),
        (
            "unknown debug key",
            c("[debug]\nshell = true\n"),
            5,
            "unknown field `shell`",
        ),
        (
            "console_shell is a boolean",
            c("[debug]\nconsole_shell = \"on\"\n"),
            5,
            "invalid type",
        ),
        (
            "unknown container network",
            c(&format!("{WEB}network = \"bridge\"\n")),
            8,
            "is not \"host\" or \"none\"",
        ),
        (
            "volume without a path",
            c(&format!("{WEB}volumes = [\"data\"]\n")),
            8,
            "is not NAME:/PATH",
        ),
        (
            "volume with a relative path",
            c(&format!("{WEB}volumes = [\"data:srv\"]\n")),
            8,
            "is not NAME:/PATH",
        ),
        (
            "volume path with ..",
            c(&format!("{WEB}volumes = [\"data:/srv/../etc\"]\n")),
            8,
            "is not NAME:/PATH",
        ),
        (
            "volume name in capitals",
            c(&format!("{WEB}volumes = [\"Data:/srv\"]\n")),
            8,
            "volume name \"Data\" is not valid",
        ),
        (
            "two volumes on one path",
            c(&format!("{WEB}volumes = [\"a:/srv\", \"b:/srv\"]\n")),
            8,
            "two volumes are mounted on \"/srv\"",
        ),
        (
            "memory not a size",
            c(&format!("{WEB}memory = \"64Q\"\n")),
            8,
            "memory size is not a size",
        ),
        (
            "memory too small",
            c(&format!("{WEB}memory = \"1M\"\n")),
            8,
            "memory size 1 MiB is too small",
        ),
        (
            "cpus zero",
            c(&format!("{WEB}cpus = 0.0\n")),
            8,
            "cpus is a number of CPUs",
        ),
        (
            "pids zero",
            c(&format!("{WEB}pids = 0\n")),
            8,
            "pids is the most processes",
        ),
        (
            "unknown capability",
            c(&format!("{WEB}cap_add = [\"FLY\"]\n")),
            8,
            "is not a Linux capability",
        ),
        (
            "unknown capability to drop",
            c(&format!("{WEB}cap_drop = [\"CAP_FLY\"]\n")),
            8,
            "is not a Linux capability",
        ),
        (
            "privileged is a boolean",
            c(&format!("{WEB}privileged = \"yes\"\n")),
            8,
            "invalid type",
        ),
        (
            "unknown container key",
            c(&format!("{WEB}memory_limit = \"64M\"\n")),
            8,
            "unknown field `memory_limit`",
        ),
        (
            "depends on an unknown container",
            c(&format!("{WEB}depends_on = [\"db\"]\n")),
            5,
            "depends on \"db\", which is not a container",
        ),
        (
            "depends on itself",
            c(&format!("{WEB}depends_on = [\"web\"]\n")),
            5,
            "depends on itself",
        ),
        (
            "depends_on cycle",
            c(&format!(
                "{WEB}depends_on = [\"db\"]\n[[container]]\nname = \"db\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/busybox\"]\ndepends_on = [\"web\"]\n"
            )),
            5,
            "depends_on forms a cycle between containers web, db",
        ),
        (
            "log size too small",
            c("[logs]\nmax_size = \"1K\"\n"),
            5,
            "logs max_size is a size of at least 4K",
        ),
        (
            "no rotated logs kept",
            c("[logs]\nkeep = 0\n"),
            5,
            "logs keep is a number of files from 1 to 100",
        ),
        (
            "unknown logs key",
            c("[logs]\nrotate = true\n"),
            5,
            "unknown field `rotate`",
        ),
        (
            "DNS server not an address",
            c("[network]\ndns = [\"dns.example\"]\n"),
            5,
            "DNS server \"dns.example\" is not an IPv4 address",
        ),
    ]
}

/// A container up to the line where its health fields go (line 8 follows).
const WEB: &str = "[[container]]\nname = \"web\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/busybox\"]\n";

/// A minisign public key (the one in minisign's documentation).
const PUBLIC_KEY: &str =
    "untrusted comment: minisign public key 1\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";

#[test]
fn update_keys_must_be_minisign_public_keys_with_distinct_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys/old")).unwrap();
    std::fs::write(dir.path().join("keys/release.pub"), PUBLIC_KEY).unwrap();
    std::fs::write(dir.path().join("keys/old/release.pub"), PUBLIC_KEY).unwrap();
    std::fs::write(
        dir.path().join("keys/secret.key"),
        "untrusted comment: minisign encrypted secret key\nRWRTY0IyAAAAAAAA\n",
    )
    .unwrap();
    let recipe = dir.path().join("r.toml");
    let load = |update: &str| {
        std::fs::write(&recipe, format!("{HEAD}[update]\n{update}\n")).unwrap();
        berth_builder::recipe::load(&recipe)
    };
    let plan = load("keys = [\"keys/release.pub\"]\nhealth_timeout = \"20s\"").unwrap();
    assert_eq!(plan.update.keys.len(), 1);
    assert_eq!(plan.update.keys[0].stem, "release");
    assert_eq!(plan.update.keys[0].content, PUBLIC_KEY.as_bytes());
    assert_eq!(
        plan.update.health_timeout,
        std::time::Duration::from_secs(20)
    );

    assert_eq!(plan.update.repository, None);
    let plan = load(
        "keys = [\"keys/release.pub\"]\nrepository = \"http://10.0.2.2:8080/repo\"\n\
         channel = \"beta\"\ninterval = \"6h\"\nreboot_window = \"Mon-Fri 02:00-04:00 +01:00\"\n\
         report = \"http://10.0.2.2:8081/report\"",
    )
    .unwrap();
    assert_eq!(
        plan.update.repository.as_deref(),
        Some("http://10.0.2.2:8080/repo")
    );
    assert_eq!(
        plan.update.channel.as_ref().map(|c| c.as_str()),
        Some("beta")
    );
    assert_eq!(
        plan.update.interval,
        Some(std::time::Duration::from_secs(6 * 3600))
    );
    assert_eq!(
        plan.update.reboot.map(|r| r.to_string()).as_deref(),
        Some("Mon-Fri 02:00-04:00 +01:00")
    );
    assert_eq!(
        plan.update.report.as_deref(),
        Some("http://10.0.2.2:8081/report")
    );

    let err = load("keys = [\"keys/secret.key\"]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a minisign public key"), "{err}");
    assert!(err.contains("r.toml:5:"), "{err}");
    let err = load("keys = [\"keys/release.pub\", \"keys/old/release.pub\"]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("both be /etc/berth/keys/release.pub"), "{err}");
}

#[test]
fn health_and_debug_defaults() {
    let text = format!("{HEAD}{WEB}critical = true\nhealth = {{ http = \"http://localhost:8080/ok\", interval = \"500ms\", start_period = \"2m\" }}\n");
    let plan = parse(Path::new("r.toml"), &text).unwrap();
    let web = &plan.containers[0];
    assert!(web.critical);
    let health = web.health.clone().unwrap();
    assert_eq!(
        health.probe,
        berth_format::HealthProbe::Http {
            port: 8080,
            path: "/ok".into()
        }
    );
    assert_eq!(
        (
            health.interval_ms,
            health.timeout_ms,
            health.retries,
            health.start_period_ms
        ),
        (500, 3000, 3, 120_000)
    );
    assert_eq!(
        plan.update.health_timeout,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(plan.console_shell, berth_builder::recipe::ConsoleShell::Off);
    let plan = parse(
        Path::new("r.toml"),
        &format!("{HEAD}[debug]\nconsole_shell = true\n{WEB}"),
    )
    .unwrap();
    assert_eq!(
        plan.console_shell,
        berth_builder::recipe::ConsoleShell::Busybox
    );
    assert!(!plan.containers[0].critical);
    assert!(plan.containers[0].health.is_none());
}

#[test]
fn broken_recipes_name_line_and_reason() {
    let cases = cases();
    assert!(cases.len() >= 10);
    for (what, text, line, words) in cases {
        let err = parse(Path::new("recipes/broken.toml"), &text)
            .err()
            .unwrap_or_else(|| panic!("{what}: recipe was accepted:\n{text}"));
        let at = err
            .location()
            .unwrap_or_else(|| panic!("{what}: error has no location: {err}"));
        let shown = err.to_string();
        assert_eq!(at.line, line, "{what}: wrong line in:\n{shown}");
        assert!(
            shown.starts_with(&format!("recipes/broken.toml:{line}:")),
            "{what}: message does not start with file:line:\n{shown}"
        );
        assert!(
            shown.contains(words),
            "{what}: message lacks {words:?}:\n{shown}"
        );
        // The snippet shows the offending line.
        let source_line = text.lines().nth(line - 1).unwrap_or_default();
        assert!(shown.contains(source_line), "{what}: no snippet:\n{shown}");
    }
}

#[test]
fn image_references_and_registries() {
    let recipe = format!(
        "{HEAD}[registry.\"127.0.0.1:5000\"]\ninsecure = true\n\n\
         [[container]]\nname = \"a\"\nimage = \"127.0.0.1:5000/team/app:1.4\"\nuser = \"1000:1000\"\n\n\
         [[container]]\nname = \"b\"\nimage = \"busybox\"\n\n\
         [[container]]\nname = \"c\"\nimage = \"docker://ghcr.io/team/app@sha256:{}\"\n",
        "0".repeat(64)
    );
    let plan = parse(Path::new("r.toml"), &recipe).unwrap();
    use berth_builder::recipe::{ImageRef, RootfsSource, Transport};
    let refs: Vec<String> = plan
        .containers
        .iter()
        .map(|c| match &c.source {
            RootfsSource::Image {
                reference: ImageRef::Registry(r),
                ..
            } => r.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        refs,
        [
            "127.0.0.1:5000/team/app:1.4".to_string(),
            "docker.io/library/busybox:latest".to_string(),
            format!("ghcr.io/team/app@sha256:{}", "0".repeat(64)),
        ]
    );
    assert_eq!(plan.transport("127.0.0.1:5000"), Transport::PlainHttp);
    // Only the registries the recipe names get plain HTTP; loopback included.
    assert_eq!(plan.transport("localhost:5000"), Transport::Https);
    assert_eq!(plan.transport("docker.io"), Transport::Https);
    assert_eq!(plan.containers[0].user.as_deref(), Some("1000:1000"));
    assert_eq!(plan.lock_path(), Path::new("r.lock"));
}

#[test]
fn example_recipes_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            berth_builder::recipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn dhcp_is_the_default_network() {
    let base = "[image]\nname = \"x\"\nversion = \"1.0.0\"\n";
    let plan = |text: String| parse(Path::new("r.toml"), &text).unwrap().network;
    assert!(plan(base.to_string()).dhcp);
    assert!(plan(format!("{base}[network]\n")).dhcp);
    assert!(!plan(format!("{base}[network]\ndhcp = false\n")).dhcp);
    let fixed = plan(format!(
        "{base}[network]\nipv4 = {{ address = \"10.0.2.15/24\" }}\n"
    ));
    assert!(!fixed.dhcp);
    assert!(fixed.ipv4.is_some());
}

#[test]
fn container_runtime_fields() {
    use berth_builder::recipe::{ContainerNetwork, Limits, Privileges};
    let text = format!(
        "{HEAD}[network]\ndns = [\"1.1.1.1\"]\n{WEB}network = \"none\"\nvolumes = [\"web-data:/srv\"]\nwritable = true\nmemory = \"64M\"\ncpus = 0.5\npids = 100\ncap_add = [\"net_admin\"]\ncap_drop = [\"CAP_KILL\"]\nprivileged = true\ndepends_on = [\"db\"]\n[[container]]\nname = \"db\"\npackages = [\"busybox-static\"]\ncommand = [\"/bin/busybox\"]\n"
    );
    let plan = parse(Path::new("r.toml"), &text).unwrap();
    assert_eq!(plan.network.dns, ["1.1.1.1"]);
    // depends_on puts db first.
    let names: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);
    let web = &plan.containers[1];
    assert_eq!(web.network, ContainerNetwork::None);
    assert_eq!(web.volumes, [("web-data".to_string(), "/srv".to_string())]);
    assert!(web.writable);
    assert_eq!(
        web.limits,
        Limits {
            memory: Some(64 << 20),
            millicpus: Some(500),
            pids: Some(100),
        }
    );
    assert_eq!(web.cap_add, ["CAP_NET_ADMIN"]);
    assert_eq!(web.cap_drop, ["CAP_KILL"]);
    assert_eq!(web.privileges, Privileges::Privileged);
    let db = &plan.containers[0];
    assert_eq!(db.network, ContainerNetwork::Host);
    assert_eq!(db.privileges, Privileges::Confined);
    assert_eq!(db.limits, Limits::default());
}

#[test]
fn unreadable_recipe_says_which_file() {
    let err = berth_builder::recipe::load(Path::new("/nonexistent/recipe.toml")).unwrap_err();
    assert!(matches!(err, RecipeError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/recipe.toml"));
}
