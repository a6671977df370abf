//! A vendor's ledger: the orders it placed and the deliveries it thanked for,
//! optionally kept in a file so that a restarted vendor carries on where it
//! stopped: it re-sends what was not delivered and never thanks twice.
//!
//! The file holds one JSON record per line, appended as things happen:
//! `{"placed":{…order…}}` and `{"thanked":"<orderId>"}`. A last line cut short
//! by a crash is ignored. Opening the file rewrites it as what is still
//! outstanding plus one `{"settled":<count>}` line for the rest, so that
//! neither the file nor the vendor's memory grows with its history.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::protocol::{Order, OrderId, StoreId};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum LedgerLine {
    /// Orders placed in earlier runs and settled (delivered or refused).
    Settled(u64),
    Placed(Order),
    Thanked(OrderId),
}

/// What the vendor has placed and thanked for.
pub struct Ledger {
    file: Option<File>,
    placed: u64,
    outstanding: HashMap<OrderId, Order>,
}

impl Ledger {
    /// A ledger kept in memory only.
    pub fn in_memory() -> Self {
        Ledger {
            file: None,
            placed: 0,
            outstanding: HashMap::new(),
        }
    }

    /// The ledger in `path` (created if missing) for `store`, compacted.
    pub fn open(path: &Path, store: &StoreId) -> anyhow::Result<Self> {
        let mut ledger = Ledger::in_memory();
        if path.exists() {
            let file =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            for (number, line) in BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                match serde_json::from_str::<LedgerLine>(&line) {
                    Ok(LedgerLine::Settled(count)) => ledger.placed += count,
                    Ok(LedgerLine::Placed(order)) => {
                        if &order.store != store {
                            bail!(
                                "{} belongs to store {}, not {store}",
                                path.display(),
                                order.store
                            );
                        }
                        ledger.placed += 1;
                        ledger.outstanding.insert(order.order_id.clone(), order);
                    }
                    Ok(LedgerLine::Thanked(order_id)) => {
                        ledger.outstanding.remove(&order_id);
                    }
                    Err(error) => {
                        log::warn!("{} line {}: ignored ({error})", path.display(), number + 1)
                    }
                }
            }
        }
        ledger.file = Some(ledger.rewrite(path)?);
        Ok(ledger)
    }

    /// Writes the ledger as it stands to `path` (through a temporary file,
    /// so that a crash leaves the old file or the new one) and returns the
    /// new file, open for appending.
    fn rewrite(&self, path: &Path) -> anyhow::Result<File> {
        let context = || format!("cannot write {}", path.display());
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = std::path::PathBuf::from(temporary);
        let mut contents = Vec::new();
        let settled = self.placed - self.outstanding.len() as u64;
        for record in std::iter::once(LedgerLine::Settled(settled))
            .chain(self.outstanding.values().cloned().map(LedgerLine::Placed))
        {
            serde_json::to_writer(&mut contents, &record)?;
            contents.push(b'\n');
        }
        let mut file = File::create(&temporary).with_context(context)?;
        file.write_all(&contents).with_context(context)?;
        file.sync_all().with_context(context)?;
        std::fs::rename(&temporary, path).with_context(context)?;
        OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(context)
    }

    /// Orders placed so far, in this run and earlier ones.
    pub fn placed(&self) -> u64 {
        self.placed
    }

    /// Orders placed and not yet delivered.
    pub fn outstanding(&self) -> impl Iterator<Item = &Order> {
        self.outstanding.values()
    }

    /// How many placed orders are not yet delivered.
    pub fn outstanding_count(&self) -> usize {
        self.outstanding.len()
    }

    /// The order `order_id` if it is placed and not yet delivered.
    pub fn get(&self, order_id: &OrderId) -> Option<&Order> {
        self.outstanding.get(order_id)
    }

    /// Records a new order, before it is sent.
    pub fn record_placed(&mut self, order: &Order) -> anyhow::Result<()> {
        self.append(&LedgerLine::Placed(order.clone()))?;
        self.placed += 1;
        self.outstanding
            .insert(order.order_id.clone(), order.clone());
        Ok(())
    }

    /// Records a thank-you for an outstanding order, right after it is
    /// printed; it is outstanding no more.
    pub fn record_thanked(&mut self, order_id: &OrderId) -> anyhow::Result<()> {
        self.append(&LedgerLine::Thanked(order_id.clone()))?;
        self.outstanding.remove(order_id);
        Ok(())
    }

    /// Forgets an order the hub refused: it will never be delivered.
    pub fn forget(&mut self, order_id: &OrderId) -> bool {
        self.outstanding.remove(order_id).is_some()
    }

    fn append(&mut self, record: &LedgerLine) -> anyhow::Result<()> {
        if let Some(file) = &mut self.file {
            let mut line = serde_json::to_vec(record)?;
            line.push(b'\n');
            file.write_all(&line)
                .context("writing the vendor state file")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::vendor::fake_order;

    #[test]
    fn a_reopened_ledger_knows_what_was_placed_and_thanked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendor.state");
        let store = StoreId::new("acme").unwrap();
        let (first, second) = (fake_order(&store), fake_order(&store));
        {
            let mut ledger = Ledger::open(&path, &store).unwrap();
            ledger.record_placed(&first).unwrap();
            ledger.record_placed(&second).unwrap();
            ledger.record_thanked(&first.order_id).unwrap();
        }
        // A crash mid-write leaves half a line; it is ignored.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"thanked\":\"x")
            .unwrap();
        let mut ledger = Ledger::open(&path, &store).unwrap();
        let third = fake_order(&store);
        ledger.record_placed(&third).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&path, &store).unwrap();
        assert_eq!(ledger.placed(), 3, "the record after the cut line is read");
        assert!(ledger.get(&first.order_id).is_none(), "thanked is settled");
        assert!(
            ledger
                .outstanding()
                .any(|order| order.order_id == second.order_id)
        );
        assert_eq!(ledger.outstanding_count(), 2);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(
            lines, 3,
            "the reopened file holds the settled count and what is outstanding"
        );

        let other = StoreId::new("globex").unwrap();
        assert!(
            Ledger::open(&path, &other).is_err(),
            "a ledger is for one store"
        );
    }
}
