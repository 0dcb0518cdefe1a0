//! First-boot provisioning, a small Ignition: `berth/provision.toml` on the ESP
//! (mounted on /efi) sets per-device values over the recipe's defaults:
//!
//! ```toml
//! hostname = "edge-17"
//! [network]
//! ipv4 = { interface = "eth0", address = "192.168.1.17/24", gateway = "192.168.1.1" }
//! dns = ["192.168.1.1"]
//! [env]
//! SITE = "north"
//! [time]
//! ntp = ["192.168.1.1"]
//! [update]
//! repository = "http://updates.example/edge"
//! channel = "beta"          # the agent's settings, over the recipe's
//! interval = "6h"
//! reboot = "manual"        # or a window: reboot_window = "Mon-Fri 02:00-04:00 +01:00"
//! report = "http://fleet.example/report"
//! device = "edge-17"        # the identity in status reports (else the host name)
//! ```
//!
//! The file is read leniently, field by field: a field that is not valid is
//! logged and ignored, the others apply; a file that is not TOML at all is
//! logged and ignored. What was accepted is kept on the data partition
//! (`/var/lib/berth/provision.toml`) and used on later boots when the ESP has no
//! file (a provisioning stick removed, an ESP rewritten by an update).
//!
//! The settings and their parser are `berth_format::provision` (shared with
//! `berth flash --provision`, which checks a file before writing it).

use std::path::Path;

use berth_format::atomic::write_atomically;
pub use berth_format::provision::{parse, Provision};

/// Where the file is on the mounted ESP.
pub const ESP_FILE: &str = berth_format::layout::PROVISION_ESP_FILE;
/// Where the accepted settings are kept (the device agent reads the update
/// repository from there).
pub const SAVED_FILE: &str = berth_format::layout::PROVISION_SAVED_FILE;

/// Reads the ESP's file (else the kept one), logs what is wrong with it, keeps
/// what was accepted on the data partition and returns it.
///
/// The ESP's file replaces the kept copy only when it could be read and sets at
/// least one valid value. A file that is there but unreadable (an I/O error, not
/// UTF-8) or wholly invalid (not TOML, empty as a cut write on FAT leaves it, or
/// no field valid) is logged and passed over: the kept copy and its settings stay
/// in force, so a bad stick or a damaged ESP never takes a device's network away.
pub fn load(esp_file: &Path, saved_file: &Path) -> Provision {
    match std::fs::read_to_string(esp_file) {
        Ok(text) => {
            let (provision, problems) = parse(&text);
            for problem in &problems {
                log!("provisioning {}: {problem}", esp_file.display());
            }
            if !provision.is_empty() {
                keep(saved_file, &provision);
                return applied(provision, esp_file);
            }
            log!(
                "provisioning {}: no valid setting in it: passed over, the kept settings stay",
                esp_file.display()
            );
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => log!(
            "provisioning {}: unreadable ({err}): passed over, the kept settings stay",
            esp_file.display()
        ),
    }
    let text = match std::fs::read_to_string(saved_file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Provision::default(),
        Err(err) => {
            log!("provisioning {}: unreadable ({err})", saved_file.display());
            return Provision::default();
        }
    };
    let (provision, problems) = parse(&text);
    for problem in &problems {
        log!("provisioning {}: {problem}", saved_file.display());
    }
    applied(provision, saved_file)
}

/// Logs where the settings came from, keeps a provisioned seed, returns them.
fn applied(provision: Provision, source: &Path) -> Provision {
    if let Some(seed) = &provision.update.seed {
        keep_seed(Path::new(berth_format::layout::UPDATE_SEED_PATH), seed);
    }
    if !provision.is_empty() {
        log!("provisioning from {} applied", source.display());
    }
    provision
}

/// Keeps the accepted settings on the data partition, atomically: a cut leaves
/// the old copy or the new one, never a torn one.
fn keep(saved_file: &Path, provision: &Provision) {
    let text = provision.render();
    if std::fs::read_to_string(saved_file).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    if let Err(err) = write_atomically(saved_file, text.as_bytes()) {
        log!("keeping provisioning in {}: {err}", saved_file.display());
    }
}

/// Writes a provisioned rollout seed where the update agent reads it (unless
/// it is there already), atomically.
fn keep_seed(path: &Path, seed: &str) {
    let text = format!("{seed}\n");
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    match write_atomically(path, text.as_bytes()) {
        Ok(()) => log!("provisioning: rollout seed set"),
        Err(err) => log!(
            "provisioning: keeping the rollout seed in {}: {err}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_format::provision::ProvisionedUpdate;
    use berth_format::ImageConfig;
    use std::net::Ipv4Addr;

    const FULL: &str = r#"
hostname = "edge-17"
[network]
ipv4 = { interface = "eth1", address = "192.168.1.17/24", gateway = "192.168.1.1" }
dns = ["192.168.1.1", "9.9.9.9"]
[env]
SITE = "north"
[time]
ntp = ["10.0.2.2"]
[update]
repository = "https://updates.example/edge"
channel = "beta"
interval = "6h"
reboot = "manual"
report = "http://10.0.2.2:9000/report"
device = "edge-17"
seed = "00000000000000000000000000000000000000000000000000000000000000AB"
"#;

    fn config() -> ImageConfig {
        ImageConfig::parse("[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n")
            .unwrap()
    }

    #[test]
    fn parses_every_field() {
        let (p, problems) = parse(FULL);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(p.hostname.as_deref(), Some("edge-17"));
        let ipv4 = p.ipv4.clone().unwrap();
        assert_eq!(
            (ipv4.interface.as_str(), ipv4.address.as_str(), ipv4.prefix),
            ("eth1", "192.168.1.17", 24)
        );
        assert_eq!(ipv4.gateway.as_deref(), Some("192.168.1.1"));
        assert_eq!(
            p.dns.as_deref(),
            Some(&["192.168.1.1".to_string(), "9.9.9.9".to_string()][..])
        );
        assert_eq!(p.env.get("SITE").map(String::as_str), Some("north"));
        assert_eq!(p.ntp_servers(), [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(
            p.update.repository.as_deref(),
            Some("https://updates.example/edge")
        );
        assert_eq!(p.update.channel.as_deref(), Some("beta"));
        assert_eq!(p.update.interval_s, Some(6 * 3600));
        assert_eq!(p.update.reboot.as_deref(), Some("manual"));
        assert_eq!(
            p.update.report.as_deref(),
            Some("http://10.0.2.2:9000/report")
        );
        assert_eq!(p.update.device.as_deref(), Some("edge-17"));
        assert_eq!(
            p.update.seed.as_deref(),
            Some("00000000000000000000000000000000000000000000000000000000000000ab")
        );
        // What is kept on the data partition reads back the same.
        let (again, problems) = parse(&p.render());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(again, p);
    }

    #[test]
    fn invalid_fields_are_reported_and_skipped_one_by_one() {
        let text = r#"
hostname = "not a host name!"
color = "blue"
[network]
dhcp = "yes"
dns = ["192.168.1.1", "dns.example"]
ipv4 = { address = "10.0.0.5" }
[env]
GOOD = "1"
BAD = 2
[time]
ntp = ["pool.example"]
zone = "UTC"
[update]
repository = "ftp://x"
channel = "../beta"
interval = "5s"
reboot = "later"
color = 1
"#;
        let (p, problems) = parse(text);
        assert_eq!(p.env.get("GOOD").map(String::as_str), Some("1"));
        assert_eq!(p.env.len(), 1);
        assert_eq!(p.hostname, None);
        assert_eq!(p.dhcp, None);
        assert_eq!(p.dns, None);
        assert_eq!(p.ipv4, None);
        assert_eq!(p.update, ProvisionedUpdate::default());
        assert!(p.ntp.is_empty());
        assert_eq!(problems.len(), 13, "{problems:#?}");
        assert!(problems
            .iter()
            .any(|m| m.contains("color is not a setting")));
        for field in ["channel", "interval", "reboot", "color"] {
            assert!(
                problems
                    .iter()
                    .any(|m| m.contains(&format!("update.{field}"))),
                "{field}: {problems:#?}"
            );
        }
    }

    #[test]
    fn a_provisioned_seed_is_kept_where_the_agent_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/berth/update/seed");
        let seed = "ab".repeat(32);
        keep_seed(&path, &seed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{seed}\n"));
        let other = "cd".repeat(32);
        keep_seed(&path, &other);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{other}\n")
        );
    }

    #[test]
    fn not_toml_is_ignored_whole() {
        let (p, problems) = parse("hostname = \n[[[");
        assert!(p.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("not TOML"), "{problems:?}");
    }

    #[test]
    fn applies_over_the_recipe() {
        let mut c = config();
        let (p, _) = parse(FULL);
        p.apply(&mut c);
        assert_eq!(c.image.hostname, "edge-17");
        assert!(!c.network.dhcp);
        assert_eq!(c.network.ipv4.unwrap().interface, "eth1");
        assert_eq!(c.network.dns.len(), 2);
        assert_eq!(
            c.update.repository.as_deref(),
            Some("https://updates.example/edge")
        );
        assert_eq!(c.update.channel.as_deref(), Some("beta"));
        assert_eq!(c.update.interval_s, Some(6 * 3600));

        let mut c = config();
        let (p, _) = parse("hostname = \"b\"\n");
        p.apply(&mut c);
        assert_eq!(c.image.hostname, "b");
        assert!(c.network.dhcp);
    }

    #[test]
    fn loads_the_esp_file_keeps_it_and_falls_back_to_the_kept_copy() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("efi/berth/provision.toml");
        let saved = dir.path().join("var/lib/berth/provision.toml");
        assert!(load(&esp, &saved).is_empty());
        std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
        std::fs::write(&esp, "hostname = \"edge-1\"\nbogus = 1\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        std::fs::remove_file(&esp).unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
    }

    /// Writes `hostname = "edge-1"` and a static address through the ESP, so
    /// the kept copy holds them.
    fn provisioned(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let esp = dir.join("efi/berth/provision.toml");
        let saved = dir.join("var/lib/berth/provision.toml");
        std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
        std::fs::write(
            &esp,
            "hostname = \"edge-1\"\n[network]\nipv4 = { address = \"192.168.1.17/24\" }\n",
        )
        .unwrap();
        let first = load(&esp, &saved);
        assert_eq!(first.hostname.as_deref(), Some("edge-1"));
        assert!(first.ipv4.is_some());
        (esp, saved)
    }

    #[test]
    fn a_wholly_invalid_esp_file_leaves_the_kept_settings_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        let kept = std::fs::read_to_string(&saved).unwrap();
        for bad in [
            "this is not toml [[[",
            "",
            "\0\0\0\0\0\0\0\0",
            "hostname = 7\n[network]\ndns = \"nope\"\n",
        ] {
            std::fs::write(&esp, bad).unwrap();
            let provision = load(&esp, &saved);
            assert_eq!(provision.hostname.as_deref(), Some("edge-1"), "{bad:?}");
            assert!(provision.ipv4.is_some(), "{bad:?}");
            assert_eq!(std::fs::read_to_string(&saved).unwrap(), kept, "{bad:?}");
        }
    }

    #[test]
    fn an_unreadable_esp_file_leaves_the_kept_settings_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        let kept = std::fs::read_to_string(&saved).unwrap();
        // Not UTF-8: read_to_string fails as an unreadable file does.
        std::fs::write(&esp, b"hostname = \"\xff\xfe\"\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        // A folder where the file should be: EISDIR, as an I/O error reads.
        std::fs::remove_file(&esp).unwrap();
        std::fs::create_dir(&esp).unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), kept);
    }

    #[test]
    fn the_kept_copy_is_replaced_whole_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        std::fs::write(&esp, "hostname = \"edge-2\"\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-2"));
        std::fs::remove_file(&esp).unwrap();
        let again = load(&esp, &saved);
        assert_eq!(again.hostname.as_deref(), Some("edge-2"));
        assert_eq!(again.ipv4, None, "the new file replaced the old settings");
        let names: Vec<_> = std::fs::read_dir(saved.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("provision.toml")]);
    }
}
