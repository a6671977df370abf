//! A courier's name when it is given none: the same across restarts on the
//! same machine and user, so that a restarted driver gets its packages back.
//!
//! The name is kept in the user's state dir (`$XDG_STATE_HOME/caps`, else
//! `~/.local/state/caps`), one file per slot, each locked while a driver uses
//! it: a second nameless driver on the same machine takes the next slot (and
//! keeps that one in turn) instead of posing as the first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::protocol::DriverName;

/// Nameless drivers one user can run at once on one machine.
const SLOTS: usize = 32;

/// A driver's kept name, held (locked) while the driver runs.
pub struct KeptName {
    /// The name.
    pub name: DriverName,
    /// Where it is kept.
    pub path: PathBuf,
    /// The lock on it, released when the driver exits.
    _lock: File,
}

/// The state dir caps keeps per-user state in.
pub fn default_state_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty());
    if let Some(dir) = xdg {
        return PathBuf::from(dir).join("caps");
    }
    match std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/caps"),
        None => PathBuf::from("caps-state"),
    }
}

/// The name kept in the first free slot under `dir`, made up (and kept) the
/// first time.
pub fn kept_name(dir: &Path) -> anyhow::Result<KeptName> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for slot in 1..=SLOTS {
        let file_name = match slot {
            1 => "driver-name".to_owned(),
            n => format!("driver-name.{n}"),
        };
        let path = dir.join(file_name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.try_lock().is_err() {
            continue; // another nameless driver of this user runs with it
        }
        let mut kept = String::new();
        file.read_to_string(&mut kept)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let name = match DriverName::new(kept.trim()) {
            Ok(name) => name,
            Err(_) => {
                let name = made_up_name();
                file.set_len(0)?;
                writeln!(file, "{name}")
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                name
            }
        };
        return Ok(KeptName {
            name,
            path,
            _lock: file,
        });
    }
    bail!("{SLOTS} nameless drivers already run as this user: give this one a --name")
}

fn made_up_name() -> DriverName {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    DriverName::new(format!("driver-{suffix}")).expect("a made-up name is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_across_runs_and_a_second_driver_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let first = kept_name(dir.path()).unwrap();
        let second = kept_name(dir.path()).unwrap();
        assert_ne!(
            first.name, second.name,
            "two drivers at once are two drivers"
        );
        let (first_name, second_name) = (first.name.clone(), second.name.clone());
        drop(first);
        drop(second);
        assert_eq!(
            kept_name(dir.path()).unwrap().name,
            first_name,
            "kept across runs"
        );
        let again = (
            kept_name(dir.path()).unwrap(),
            kept_name(dir.path()).unwrap(),
        );
        assert_eq!(
            (again.0.name.clone(), again.1.name.clone()),
            (first_name, second_name)
        );
    }
}
