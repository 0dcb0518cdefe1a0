//! `berth-update status`, `rollback` and `mark-good`: what the two slots hold and
//! which one boots next, and the two hand-made changes to that.

use std::fmt::Write as _;

use serde::Serialize;

use super::system::System;
use berth_bundle::channel::DeviceSeed;
use berth_format::clock::utc_datetime;
use berth_format::data::{DataReport, DataState};
use berth_format::entries::{self, EntriesError, EspState};
use berth_format::layout::Slot;
use berth_format::state::{
    now, AssessmentOutcome, AssessmentRecord, AssessmentRecord as Assessment, CheckRecord,
    DeliveryMethod, InstallRecord, PendingReboot, RollbackRecord, StateError, UpdateState,
};

/// Why a status, rollback or mark-good failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Entries(#[from] EntriesError),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("refused: {0}")]
    Refused(String),
}

/// One slot, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// Image version of the slot's entry; `None` when the slot has no entry.
    pub version: Option<String>,
    /// The running system booted from this slot.
    pub booted: bool,
    /// systemd-boot boots this slot next.
    pub next: bool,
    /// Blessed: boots with no counting.
    pub good: bool,
    /// Boot tries left while counting; `None` when blessed or without entry.
    pub tries_left: Option<u32>,
    /// Boot tries used while counting.
    pub tries_used: Option<u32>,
    /// The slot can boot: entry and kernel present, tries left (or blessed).
    pub bootable: bool,
    /// The entry file, `berth-b+2-1.conf`.
    pub entry: Option<String>,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub compatible: String,
    pub booted: Slot,
    /// The slot systemd-boot boots next; `None` if no berth entry would boot.
    pub next: Option<Slot>,
    pub slots: Vec<SlotStatus>,
    pub install: Option<InstallRecord>,
    pub assessment: Option<Assessment>,
    pub rollback: Option<RollbackRecord>,
    /// The last look at the update repository.
    pub check: Option<CheckRecord>,
    /// This device's place in rollout waves, in percent (`[0, 100)`), once it
    /// has a seed (made at its first check, or provisioned).
    pub position: Option<f64>,
    /// An installed update the agent reboots into later (its window) or never
    /// by itself (`manual`): shown while the slot that boots next holds it.
    pub reboot_pending: Option<PendingReboot>,
    /// What became of the data partition at this boot (mounted, repaired, or
    /// not mounted: `/var` a tmpfs); `None` when the init wrote no report.
    pub data: Option<DataReport>,
}

/// Reads the ESP and the state file.
pub fn status(system: &System) -> Result<Status, StatusError> {
    let esp = EspState::read(&system.esp)?;
    let state = UpdateState::load(&system.state_path)?;
    let next = esp.next_boot();
    let position = std::fs::read_to_string(system.seed_path())
        .ok()
        .and_then(|text| DeviceSeed::from_hex(&text))
        .map(|seed| seed.position().percent());
    let slots: Vec<SlotStatus> = Slot::ALL
        .iter()
        .map(|&slot| {
            let entry = esp.slot(slot);
            let counter = entry.and_then(|e| e.counter());
            SlotStatus {
                slot,
                version: entry.and_then(|e| e.image_version().map(str::to_string)),
                booted: slot == system.booted,
                next: next == Some(slot),
                good: entry.is_some_and(|e| e.is_good()),
                tries_left: counter.map(|c| c.left),
                tries_used: counter.map(|c| c.done),
                bootable: entry.is_some_and(|e| e.can_boot()),
                entry: entry.map(|e| e.file_name().to_string()),
            }
        })
        .collect();
    // A pending reboot is stale once its version no longer boots next (it was
    // booted, rolled back or replaced).
    let reboot_pending = state.reboot_pending.filter(|pending| {
        slots.iter().any(|s: &SlotStatus| {
            s.next && !s.booted && s.version.as_deref() == Some(pending.version.as_str())
        })
    });
    // An unreadable report must not hide the rest of the status (fleet reports
    // carry it): said on stderr, left out.
    let data = DataReport::load(&system.data_report).unwrap_or_else(|err| {
        eprintln!("berth-update: {err}");
        None
    });
    Ok(Status {
        compatible: system.image.compatible.clone(),
        booted: system.booted,
        next,
        slots,
        install: state.install,
        assessment: state.assessment,
        rollback: state.rollback,
        check: state.check,
        position,
        reboot_pending,
        data,
    })
}

impl Status {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "compatible: {}", self.compatible);
        if let Some(data) = &self.data {
            let state = match data.state {
                DataState::Mounted => "mounted",
                DataState::Repaired => "repaired by e2fsck",
                DataState::Unavailable => "NOT MOUNTED (/var is a tmpfs: nothing persists)",
            };
            let _ = writeln!(out, "data partition: {state}{}", suffix(&data.detail));
        }
        for slot in &self.slots {
            let mut marks = Vec::new();
            if slot.booted {
                marks.push("booted".to_string());
            }
            if slot.next {
                marks.push("boots next".to_string());
            }
            if slot.good {
                marks.push("good".to_string());
            } else if let Some(left) = slot.tries_left {
                marks.push(if left == 0 {
                    "failed: no tries left".to_string()
                } else {
                    format!("not yet good, {left} tries left")
                });
            }
            if slot.entry.is_some() && !slot.bootable {
                marks.push("not bootable".to_string());
            }
            let _ = writeln!(
                out,
                "slot {}: {}{}",
                slot.slot,
                slot.version.as_deref().unwrap_or("empty (no boot entry)"),
                if marks.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", marks.join(", "))
                }
            );
        }
        if let Some(install) = &self.install {
            let _ = writeln!(
                out,
                "last install: {} into slot {}: {:?}{}",
                if install.version.is_empty() {
                    "?"
                } else {
                    &install.version
                },
                install.slot,
                install.outcome,
                suffix(&install.reason)
            );
            if let Some(delivery) = &install.delivery {
                let _ = writeln!(
                    out,
                    "  fetched {} of the {}-byte bundle {}: {}",
                    delivery.fetched,
                    delivery.bundle_size,
                    match delivery.method {
                        DeliveryMethod::Delta => "by delta",
                        DeliveryMethod::Full => "as the full bundle",
                    },
                    delivery.reason
                );
            }
        }
        if let Some(assessment) = &self.assessment {
            let _ = writeln!(
                out,
                "last boot assessment: slot {} ({}): {:?}{}",
                assessment.slot,
                assessment.version,
                assessment.outcome,
                suffix(&assessment.reason)
            );
        }
        if let Some(rollback) = &self.rollback {
            let _ = writeln!(
                out,
                "last rollback: from slot {} ({}) to slot {} ({})",
                rollback.from, rollback.from_version, rollback.to, rollback.to_version
            );
        }
        if let Some(check) = &self.check {
            let _ = writeln!(
                out,
                "last check: {} channel {}: {:?}{}{}",
                check.repository,
                check.channel,
                check.outcome,
                if check.version.is_empty() {
                    String::new()
                } else {
                    format!(" {}", check.version)
                },
                suffix(&check.reason)
            );
            if let (false, Some(at)) = (check.waiting_for.is_empty(), check.wave_opens_at) {
                let _ = writeln!(
                    out,
                    "waiting for {}: this device's rollout wave opens at {}",
                    check.waiting_for,
                    utc_datetime(at)
                );
            }
        }
        if let Some(position) = self.position {
            let _ = writeln!(out, "rollout position: {position:.2} %");
        }
        if let Some(pending) = &self.reboot_pending {
            let _ = match pending.due {
                Some(due) => writeln!(
                    out,
                    "installed {}, reboot due at {} ({})",
                    pending.version,
                    utc_datetime(due),
                    pending.policy
                ),
                None => writeln!(
                    out,
                    "installed {}: it boots at the next reboot ({})",
                    pending.version, pending.policy
                ),
            };
        }
        out
    }
}

fn suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" — {reason}")
    }
}

/// Makes the other slot boot next. Refused when it has no entry or kernel, when
/// its tries are spent, and (unless `force`) when it was never marked good.
pub fn rollback(system: &System, force: bool) -> Result<RollbackRecord, StatusError> {
    let esp = EspState::read(&system.esp)?;
    let target = system.booted.other();
    let Some(entry) = esp.slot(target) else {
        return Err(StatusError::Refused(format!(
            "slot {target} holds nothing bootable (no boot entry)"
        )));
    };
    if !entry.can_boot() {
        return Err(StatusError::Refused(format!(
            "slot {target} ({}) cannot boot: {}",
            entry.image_version().unwrap_or("?"),
            if entry.kernel_present {
                "its boot tries are spent"
            } else {
                "its kernel is missing from the ESP"
            }
        )));
    }
    if !entry.is_good() && !force {
        return Err(StatusError::Refused(format!(
            "slot {target} ({}) was never marked good; use --force to boot it anyway",
            entry.image_version().unwrap_or("?")
        )));
    }
    let to_version = entry.image_version().unwrap_or_default().to_string();
    entries::make_next(&system.esp, target)?;
    let record = RollbackRecord {
        from: system.booted,
        from_version: system.image.version.clone(),
        to: target,
        to_version,
        at: now(),
    };
    UpdateState::update(&system.state_path, |state| {
        state.rollback = Some(record.clone())
    })?;
    Ok(record)
}

/// Blesses the booted slot by hand and records it.
pub fn mark_good(system: &System) -> Result<(), StatusError> {
    entries::bless(&system.esp, system.booted)?;
    UpdateState::update(&system.state_path, |state| {
        state.assessment = Some(AssessmentRecord {
            slot: system.booted,
            version: system.image.version.clone(),
            outcome: AssessmentOutcome::Good,
            reason: "marked good by hand (berth-update mark-good)".to_string(),
            at: now(),
        })
    })?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::system::{RunningImage, SlotDevice};
    use berth_format::layout::BootEntry;
    use berth_format::state::AssessmentOutcome;
    use std::path::Path;

    /// A device in a folder: ESP (`esp/`), slot "partitions" as files, a state
    /// file path; booted from `booted`, running `version`.
    pub(crate) fn scratch_system(dir: &Path, booted: Slot, version: &str) -> System {
        let esp = dir.join("esp");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        let slot = |slot: Slot| {
            let node = dir.join(format!("root-{slot}"));
            std::fs::File::create(&node)
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
            SlotDevice {
                slot,
                node,
                partuuid: format!("0000000{}-0000-4000-8000-000000000000", slot as u8 + 1),
                size: 8 << 20,
            }
        };
        System {
            esp,
            state_path: dir.join("var/lib/berth/update/state.toml"),
            data_report: dir.join("run/berth/data.toml"),
            keys_dir: dir.join("keys"),
            booted,
            image: RunningImage {
                name: "hello".into(),
                version: version.into(),
                compatible: "hello".into(),
            },
            slots: [slot(Slot::A), slot(Slot::B)],
            data_partuuid: "00000009-0000-4000-8000-000000000000".into(),
            warnings: Vec::new(),
        }
    }

    /// Puts slot `slot` with image `version` on the scratch ESP: kernel file and
    /// an entry, counting with `tries` or blessed (`None`).
    pub(crate) fn put_slot(system: &System, slot: Slot, version: &str, tries: Option<u32>) {
        let kernel = system.esp.join(slot.kernel_path());
        std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
        std::fs::write(&kernel, b"kernel").unwrap();
        let entry = BootEntry {
            title: format!("berth hello {version}"),
            version: version.into(),
            slot,
            root_partuuid: system.slot(slot).partuuid.clone(),
            data_partuuid: system.data_partuuid.clone(),
            verity: None,
            extra_cmdline: String::new(),
            arch: berth_format::Arch::native(),
        };
        entries::install_entry(&system.esp, &entry, tries.unwrap_or(3)).unwrap();
        if tries.is_none() {
            entries::bless(&system.esp, slot).unwrap();
        }
    }

    #[test]
    fn status_reports_both_slots_and_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::A, "1.0.0");
        put_slot(&system, Slot::A, "1.0.0", None);
        put_slot(&system, Slot::B, "1.1.0", Some(3));
        let status = status(&system).unwrap();
        assert_eq!(status.booted, Slot::A);
        assert_eq!(status.next, Some(Slot::B));
        let (a, b) = (&status.slots[0], &status.slots[1]);
        assert!(a.booted && a.good && !a.next && a.bootable);
        assert_eq!(a.version.as_deref(), Some("1.0.0"));
        assert!(!b.booted && !b.good && b.next && b.bootable);
        assert_eq!((b.tries_left, b.tries_used), (Some(3), Some(0)));
        assert_eq!(b.version.as_deref(), Some("1.1.0"));
        let text = status.render();
        assert!(text.contains("slot a: 1.0.0 (booted, good)"), "{text}");
        assert!(
            text.contains("slot b: 1.1.0 (boots next, not yet good, 3 tries left)"),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["slots"][1]["tries_left"], 3);
        assert_eq!(json["next"], "b");
    }

    #[test]
    fn status_reports_what_became_of_the_data_partition() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::A, "1.0.0");
        put_slot(&system, Slot::A, "1.0.0", None);
        // An init that wrote no report: nothing said, JSON null.
        let before = status(&system).unwrap();
        assert!(!before.render().contains("data partition"));
        assert!(serde_json::to_value(&before).unwrap()["data"].is_null());

        let report = DataReport {
            state: DataState::Unavailable,
            detail: "/dev/vda4 does not mount (EUCLEAN)".into(),
            at: 1_700_000_000,
        };
        report.save(&system.data_report).unwrap();
        let after = status(&system).unwrap();
        let text = after.render();
        assert!(
            text.contains("data partition: NOT MOUNTED (/var is a tmpfs: nothing persists) — /dev/vda4 does not mount (EUCLEAN)"),
            "{text}"
        );
        let json = serde_json::to_value(&after).unwrap();
        assert_eq!(json["data"]["state"], "unavailable", "{json:#}");
        assert_eq!(json["data"]["detail"], "/dev/vda4 does not mount (EUCLEAN)");

        // A report that cannot be read leaves the rest of the status intact.
        std::fs::write(&system.data_report, "state = 7\n").unwrap();
        let broken = status(&system).unwrap();
        assert_eq!(broken.data, None);
        assert_eq!(broken.booted, Slot::A);
    }

    #[test]
    fn status_shows_the_rollout_position_the_wave_and_a_pending_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::A, "1.0.0");
        put_slot(&system, Slot::A, "1.0.0", None);
        put_slot(&system, Slot::B, "1.1.0", Some(3));
        // No seed and no records yet: none of it shown.
        let bare = status(&system).unwrap();
        assert_eq!((bare.position, bare.reboot_pending.as_ref()), (None, None));
        let seed = DeviceSeed([7; 32]);
        std::fs::create_dir_all(system.seed_path().parent().unwrap()).unwrap();
        std::fs::write(system.seed_path(), format!("{}\n", seed.to_hex())).unwrap();
        let pending = PendingReboot {
            version: "1.1.0".into(),
            due: Some(1_800_000_000),
            policy: "window daily 02:00-04:00 +00:00".into(),
        };
        UpdateState::update(&system.state_path, |state| {
            state.check = Some(CheckRecord {
                repository: "http://r".into(),
                channel: "stable".into(),
                outcome: berth_format::state::CheckOutcome::UpToDate,
                version: String::new(),
                reason: String::new(),
                at: 1_799_990_000,
                waiting_for: "1.2.0".into(),
                wave_opens_at: Some(1_800_003_600),
            });
            state.reboot_pending = Some(pending.clone());
        })
        .unwrap();
        let shown = status(&system).unwrap();
        assert_eq!(shown.position, Some(seed.position().percent()));
        assert_eq!(shown.reboot_pending.as_ref(), Some(&pending));
        let text = shown.render();
        for line in [
            format!("rollout position: {:.2} %", seed.position().percent()),
            "waiting for 1.2.0: this device's rollout wave opens at 2027-01-15T09:00:00Z".into(),
            "installed 1.1.0, reboot due at 2027-01-15T08:00:00Z (window daily 02:00-04:00 +00:00)"
                .into(),
        ] {
            assert!(text.contains(&line), "{line:?} not in {text}");
        }
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["reboot_pending"]["due"], 1_800_000_000u64);
        assert_eq!(json["check"]["waiting_for"], "1.2.0");
        // Once slot B no longer boots next (rolled back, or booted), the
        // record is stale and not shown.
        entries::make_next(&system.esp, Slot::A).unwrap();
        assert_eq!(status(&system).unwrap().reboot_pending, None);
    }

    #[test]
    fn rollback_needs_a_good_bootable_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::B, "1.1.0");
        // Nothing in slot A yet.
        put_slot(&system, Slot::B, "1.1.0", None);
        let err = rollback(&system, false).unwrap_err().to_string();
        assert!(err.contains("slot a holds nothing bootable"), "{err}");

        // A counting (never blessed) slot A: only with --force.
        put_slot(&system, Slot::A, "1.0.0", Some(2));
        entries::make_next(&system.esp, Slot::B).unwrap();
        let err = rollback(&system, false).unwrap_err().to_string();
        assert!(err.contains("never marked good"), "{err}");
        assert_eq!(
            status(&system).unwrap().next,
            Some(Slot::B),
            "refused: nothing changed"
        );
        // --force boots it anyway.
        let forced = rollback(&system, true).unwrap();
        assert_eq!((forced.from, forced.to), (Slot::B, Slot::A));
        assert_eq!(status(&system).unwrap().next, Some(Slot::A));

        // A good slot A: rolled back, recorded, and A boots next.
        entries::bless(&system.esp, Slot::A).unwrap();
        entries::make_next(&system.esp, Slot::B).unwrap();
        let record = rollback(&system, false).unwrap();
        assert_eq!((record.from, record.to), (Slot::B, Slot::A));
        assert_eq!(record.to_version, "1.0.0");
        let status = status(&system).unwrap();
        assert_eq!(status.next, Some(Slot::A));
        assert_eq!(status.rollback.unwrap().from_version, "1.1.0");
    }

    #[test]
    fn rollback_refuses_a_slot_whose_tries_are_spent() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::B, "1.1.0");
        put_slot(&system, Slot::B, "1.1.0", None);
        put_slot(&system, Slot::A, "1.2.0", Some(1));
        // The firmware's side: one boot spends the only try.
        assert_eq!(entries::simulate_boot(&system.esp).unwrap(), Some(Slot::A));
        let err = rollback(&system, true).unwrap_err().to_string();
        assert!(err.contains("tries are spent"), "{err}");
    }

    #[test]
    fn mark_good_blesses_the_booted_slot_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let system = scratch_system(dir.path(), Slot::B, "1.1.0");
        put_slot(&system, Slot::A, "1.0.0", None);
        put_slot(&system, Slot::B, "1.1.0", Some(3));
        assert_eq!(entries::simulate_boot(&system.esp).unwrap(), Some(Slot::B));
        mark_good(&system).unwrap();
        let status = status(&system).unwrap();
        assert!(status.slots[1].good);
        assert_eq!(status.next, Some(Slot::B));
        let assessment = status.assessment.unwrap();
        assert_eq!(assessment.outcome, AssessmentOutcome::Good);
        assert!(assessment.reason.contains("by hand"));
    }
}
