//! Reloads: the orders of steps the records refused (another hub of the
//! group changed them, say) are read back beside the sequencer, all of one
//! commit's in one query, and handed to it as a command; the refused steps'
//! answers wait for it. Until they are back, the sequencer
//! refuses other events on them `busy`, as its memory of them is stale; on
//! a shared database it would otherwise wait a round trip per order with
//! every socket's events queued behind it.

use super::handle::WeakSequencerHandle;
use crate::hub::domain::OrderKey;
use crate::hub::storage::readers::Readers;

/// Reads orders back for the sequencer.
pub struct Reloader {
    readers: Readers,
    sequencer: WeakSequencerHandle,
}

impl Reloader {
    /// Reads on `readers` and answers `sequencer`.
    pub fn new(readers: Readers, sequencer: WeakSequencerHandle) -> Self {
        Reloader { readers, sequencer }
    }

    /// Starts reading `keys` back; the sequencer hears of them as
    /// `Command::Reloaded` with `batch`.
    pub fn start(&self, batch: u64, keys: Vec<OrderKey>) {
        let readers = self.readers.clone();
        let sequencer = self.sequencer.clone();
        tokio::spawn(async move {
            let wanted = keys.clone();
            let read = readers
                .read(move |records| records.held_all(&wanted))
                .await
                .map_err(|error| error.to_string());
            sequencer.reloaded(batch, keys, read);
        });
    }
}
