//! The commit log: each batch of steps appended as one record and synced, so
//! that a commit costs one small write and one `fdatasync`, and the tables
//! are brought up to date after it, off the acknowledgement's path (see
//! [`super::sqlite::logged`]).
//!
//! A data dir holds the log as files `commit-<generation>-<part>.log`. Each
//! start of the hub is a generation (the journal numbers steps from 1 again);
//! a file that grows past a size is followed by the next part. A file goes
//! once everything in it is in the tables, durably.
//!
//! A record is `length (u32 LE) · CRC-32C of the payload (u32 LE) · payload`,
//! the payload the record format's number (one byte) and the batch's steps
//! in that format (postcard: compact, and a fifth of JSON's cost to write).
//! Reading back stops at the first record that is not whole: a crash
//! mid-append leaves a torn tail (only zeros follow it), which was never
//! acknowledged. A damaged record followed by more data is not a torn tail
//! but a damaged file, and is refused; so is a torn tail in any file but the
//! newest (a file is followed by the next only after a synced append).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::journal::Step;

/// The record format this build writes and reads: [`Step`]s in postcard.
const FORMAT: u8 = 1;

/// The checksum of a record's payload.
const CHECKSUM: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
/// Bytes before a record's payload: its length and its checksum.
const HEADER: usize = 8;
/// The largest record read back: a batch is at most a few thousand steps.
const MAX_RECORD: usize = 256 << 20;

/// One file of the log, by its place in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogFile {
    /// The hub's start that wrote it.
    pub generation: u64,
    /// Its place among that start's files.
    pub part: u64,
    /// Where it is.
    pub path: PathBuf,
}

impl LogFile {
    /// The file of `generation` and `part` in `dir`.
    pub fn new(dir: &Path, generation: u64, part: u64) -> LogFile {
        LogFile {
            generation,
            part,
            path: dir.join(format!("commit-{generation}-{part}.log")),
        }
    }

    /// The log's files in `dir`, oldest first.
    pub fn all_in(dir: &Path) -> anyhow::Result<Vec<LogFile>> {
        let mut files = Vec::new();
        let listing =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name();
            let Some(place) = name
                .to_str()
                .and_then(|name| name.strip_prefix("commit-"))
                .and_then(|name| name.strip_suffix(".log"))
            else {
                continue;
            };
            let parsed = place.split_once('-').and_then(|(generation, part)| {
                Some((generation.parse().ok()?, part.parse().ok()?))
            });
            match parsed {
                Some((generation, part)) => files.push(LogFile {
                    generation,
                    part,
                    path: entry.path(),
                }),
                None => log::warn!(
                    "ignoring {}: not a commit log's name",
                    entry.path().display()
                ),
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every step in the file's whole records, in order. A torn last record
    /// is left out if `newest` (the file a crash could have torn), and
    /// refused in any other.
    pub fn read(&self, newest: bool) -> anyhow::Result<Vec<Step>> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("cannot read the commit log {}", self.path.display()))?;
        let (steps, whole) = read_records(&bytes)
            .with_context(|| format!("the commit log {} is damaged", self.path.display()))?;
        let torn = bytes[whole..].iter().any(|byte| *byte != 0);
        if torn && !newest {
            bail!(
                "the commit log {} is damaged: its record at byte {whole} is not whole, and newer files follow it",
                self.path.display()
            );
        }
        if torn {
            log::warn!(
                "the commit log {} ends in a torn record ({} bytes), never acknowledged: left out",
                self.path.display(),
                bytes.len() - whole
            );
        }
        Ok(steps)
    }

    /// Deletes the file, and makes its going durable.
    pub fn remove(&self) -> anyhow::Result<()> {
        std::fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The file being appended to.
///
/// Its space is written with zeros ahead of the records, a few MiB at a
/// time: a record then overwrites space the file already has, and its
/// `fdatasync` flushes the record alone, not the file system's journal for
/// a new size (which tripled the CPU of a sync here). A zero length ends the
/// records when they are read back.
pub struct CommitLog {
    file: File,
    /// Bytes of records so far.
    written: u64,
    /// Bytes of the file written (zeros ahead of the records), and synced.
    zeroed: u64,
    /// Whether an append waits for the disk (`fdatasync`).
    sync: bool,
}

/// Zeros written ahead of the records at a time.
const ZEROS_AHEAD: u64 = 4 << 20;

impl CommitLog {
    /// Creates `at`, which must not exist yet. With `sync`, each append
    /// returns once it is on disk; without, once the OS has it.
    pub fn create(at: &LogFile, sync: bool) -> anyhow::Result<CommitLog> {
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&at.path)
            .with_context(|| format!("cannot create the commit log {}", at.path.display()))?;
        // The file's name must outlive a power cut as its records do.
        if let Some(dir) = at.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(CommitLog {
            file,
            written: 0,
            zeroed: 0,
            sync,
        })
    }

    /// Writes zeros ahead until `end`, and syncs the file whole (its size).
    fn zero_ahead(&mut self, end: u64) -> anyhow::Result<()> {
        // A small buffer written many times: a few MiB allocated at once
        // showed as a jump of the hub's memory.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = end.next_multiple_of(ZEROS_AHEAD);
        while self.zeroed < target {
            let chunk = (target - self.zeroed).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..chunk], self.zeroed)
                .context("preparing the commit log's space")?;
            self.zeroed += chunk as u64;
        }
        if self.sync {
            self.file.sync_all().context("syncing the commit log")?;
        }
        Ok(())
    }

    /// Appends `steps` as one record.
    pub fn append(&mut self, steps: &[Step]) -> anyhow::Result<()> {
        let mut record = vec![0; HEADER];
        record.push(FORMAT);
        let mut record = postcard::to_extend(steps, record).context("encoding a record")?;
        let payload_len = record.len() - HEADER;
        if payload_len > MAX_RECORD {
            bail!(
                "a batch of {} steps is too large for one record",
                steps.len()
            );
        }
        let checksum = CHECKSUM.checksum(&record[HEADER..]);
        record[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        record[4..HEADER].copy_from_slice(&checksum.to_le_bytes());
        let end = self.written + record.len() as u64;
        if end > self.zeroed {
            self.zero_ahead(end)?;
        }
        self.file
            .write_all_at(&record, self.written)
            .context("appending to the commit log")?;
        if self.sync {
            self.file.sync_data().context("syncing the commit log")?;
        }
        self.written += record.len() as u64;
        Ok(())
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// The steps of every whole record in `bytes`, and how many bytes they take.
/// An error if a record is damaged and more data follows it.
fn read_records(bytes: &[u8]) -> anyhow::Result<(Vec<Step>, usize)> {
    let mut steps = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let checksum = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if length == 0 && checksum == 0 {
            break; // the zeros ahead of the records
        }
        let whole = length <= MAX_RECORD
            && at + HEADER + length <= bytes.len()
            && CHECKSUM.checksum(&bytes[at + HEADER..at + HEADER + length]) == checksum;
        if !whole {
            // Torn if nothing was ever written after the record's claimed
            // end (or, its length unreadable, after its header).
            let end = if length <= MAX_RECORD {
                at + HEADER + length
            } else {
                at + HEADER
            };
            if bytes
                .get(end..)
                .is_none_or(|rest| rest.iter().all(|byte| *byte == 0))
            {
                break;
            }
            bail!("the record at byte {at} is damaged, and more follows it");
        }
        let payload = &bytes[at + HEADER..at + HEADER + length];
        let (format, encoded) = payload.split_first().unwrap_or((&0, &[]));
        if *format != FORMAT {
            bail!(
                "the record at byte {at} is in format {format} (this caps reads {FORMAT}): start the caps that wrote it once to bring it into the tables"
            );
        }
        let batch: Vec<Step> = postcard::from_bytes(encoded)
            .with_context(|| format!("the record at byte {at} cannot be read"))?;
        steps.extend(batch);
        at += HEADER + length;
    }
    Ok((steps, at))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::hub::domain::Change;
    use crate::protocol::{Order, StoreId};

    fn step(seq: u64) -> Step {
        let order: Order = serde_json::from_value(serde_json::json!({
            "store": "acme", "orderId": format!("o-{seq}"),
            "customer": "Jamal Braun", "address": "Schmittfurt, LA"
        }))
        .unwrap();
        Step {
            seq,
            changes: vec![
                Change::NewOrder {
                    order,
                    seq,
                    at: Utc::now(),
                },
                Change::NoticesTrimmed {
                    store: StoreId::new("acme").unwrap(),
                    keep: 10,
                },
            ],
        }
    }

    /// A step with a change of every kind.
    fn every_change(seq: u64) -> Step {
        use crate::hub::domain::{DriverKey, OrderKey};
        use crate::protocol::{DriverName, Event, MessageId, OrderState};
        let order = step(seq).changes.remove(0);
        let Change::NewOrder { order, .. } = order else {
            unreachable!()
        };
        let store = StoreId::new("acme").unwrap();
        let message_id = MessageId::new("m-1").unwrap();
        Step {
            seq,
            changes: vec![
                Change::Transition {
                    key: OrderKey::of(&order),
                    seq,
                    version: 3,
                    state: OrderState::InTransit,
                    driver: Some(DriverKey::Named(DriverName::new("dana").unwrap())),
                    told_in_transit: true,
                    at: Utc::now(),
                },
                Change::Transition {
                    key: OrderKey::of(&order),
                    seq,
                    version: 4,
                    state: OrderState::Ready,
                    driver: Some(DriverKey::Anonymous("sid-1".into())),
                    told_in_transit: false,
                    at: Utc::now(),
                },
                Change::NoticeQueued {
                    message_id: message_id.clone(),
                    kind: Event::Delivered,
                    order,
                    at: Utc::now(),
                },
                Change::NoticeRemoved { message_id },
                Change::NoticeAcknowledged {
                    store,
                    id: "o-1".into(),
                },
            ],
        }
    }

    #[test]
    fn every_kind_of_change_is_read_back_as_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let at = LogFile::new(dir.path(), 1, 0);
        let mut log = CommitLog::create(&at, true).unwrap();
        let steps = vec![step(1), every_change(2)];
        log.append(&steps).unwrap();
        drop(log);
        assert_eq!(at.read(true).unwrap(), steps);
    }

    fn seqs(steps: &[Step]) -> Vec<u64> {
        steps.iter().map(|step| step.seq).collect()
    }

    #[test]
    fn batches_appended_are_read_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let at = LogFile::new(dir.path(), 1, 0);
        let mut log = CommitLog::create(&at, true).unwrap();
        let (first, second) = (vec![step(1), step(2)], vec![step(3)]);
        log.append(&first).unwrap();
        log.append(&second).unwrap();
        assert!(log.written() <= std::fs::metadata(&at.path).unwrap().len());
        drop(log);
        assert_eq!(at.read(true).unwrap(), [first, second].concat());
    }

    #[test]
    fn files_are_listed_by_generation_then_part_and_others_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for (generation, part) in [(10, 0), (2, 1), (2, 0)] {
            CommitLog::create(&LogFile::new(dir.path(), generation, part), true).unwrap();
        }
        std::fs::write(dir.path().join("caps.db"), b"").unwrap();
        std::fs::write(dir.path().join("commit-x-1.log"), b"").unwrap();
        let places: Vec<(u64, u64)> = LogFile::all_in(dir.path())
            .unwrap()
            .iter()
            .map(|file| (file.generation, file.part))
            .collect();
        assert_eq!(places, [(2, 0), (2, 1), (10, 0)]);
        assert!(
            CommitLog::create(&LogFile::new(dir.path(), 2, 0), true).is_err(),
            "a file is never appended to by a second start"
        );
    }

    #[test]
    fn a_torn_last_record_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let at = LogFile::new(dir.path(), 1, 0);
        let mut log = CommitLog::create(&at, true).unwrap();
        log.append(&[step(1)]).unwrap();
        log.append(&[step(2)]).unwrap();
        let whole = log.written() as usize;
        drop(log);
        // A crash mid-append: the last record's end never reached the disk,
        // and the zeros ahead are still there (or the file ends).
        let bytes = std::fs::read(&at.path).unwrap();
        for cut in [1, 5, 9] {
            let mut torn_bytes = bytes.clone();
            torn_bytes[whole - cut..whole].fill(0);
            let torn = LogFile::new(dir.path(), 2, cut as u64);
            std::fs::write(&torn.path, &torn_bytes).unwrap();
            assert_eq!(seqs(&torn.read(true).unwrap()), [1], "{cut} bytes zero");
            std::fs::write(&torn.path, &bytes[..whole - cut]).unwrap();
            assert_eq!(seqs(&torn.read(true).unwrap()), [1], "cut {cut} bytes");
            assert!(
                torn.read(false).is_err(),
                "a file followed by another was never torn by a crash"
            );
        }
    }

    #[test]
    fn a_damaged_record_with_more_after_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = LogFile::new(dir.path(), 1, 0);
        let mut log = CommitLog::create(&at, true).unwrap();
        log.append(&[step(1)]).unwrap();
        log.append(&[step(2)]).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&at.path).unwrap();
        bytes[HEADER + 3] ^= 0xff; // inside the first record's payload
        std::fs::write(&at.path, &bytes).unwrap();
        let error = at.read(true).expect_err("refused");
        assert!(
            format!("{error:#}").contains("is damaged, and more follows it"),
            "{error:#}"
        );
    }
}
