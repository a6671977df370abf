//! The hub's event log: one `EVENT {json}` line on stdout per inbound CAPS event.
//!
//! Lines are handed to a dedicated writer thread so that a slow stdout (a full
//! pipe, a terminal) never blocks the hub's async workers, and so that a burst
//! of events costs one flush rather than one syscall per line.

use std::io::Write;
use std::sync::mpsc;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::protocol::Event;

/// A cheap handle for appending to the event log; clone it freely.
#[derive(Clone)]
pub struct EventLog {
    lines: mpsc::Sender<Vec<u8>>,
}

#[derive(Serialize)]
struct Record<'a, P: Serialize> {
    event: Event,
    time: String,
    payload: &'a P,
}

impl EventLog {
    /// A log that writes to the process's stdout.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// A log on stdout whose lines start with `[tag] `, for a terminal shared
    /// with other roles (the demo).
    pub fn tagged_stdout(tag: &str) -> Self {
        Self::start(std::io::stdout(), format!("[{tag}] ").into_bytes())
    }

    /// A log that writes to `out` from a background thread; the thread ends
    /// when the last handle is dropped, after writing everything it was given.
    pub fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self::start(out, Vec::new())
    }

    fn start(out: impl Write + Send + 'static, prefix: Vec<u8>) -> Self {
        let (lines, incoming) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("caps-event-log".into())
            .spawn(move || write_lines(incoming, out, &prefix))
            .expect("spawning the event log thread");
        EventLog { lines }
    }

    /// Appends one line: `EVENT {"event":…,"time":…,"payload":…}`.
    pub fn record(&self, event: Event, payload: &impl Serialize) {
        let record = Record {
            event,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            payload,
        };
        let mut line = b"EVENT ".to_vec();
        match serde_json::to_writer(&mut line, &record) {
            Ok(()) => {
                // A send error means the writer is gone (stdout closed); the
                // hub goes on serving, so there is nothing better to do.
                let _ = self.lines.send(line);
            }
            Err(error) => log::error!("cannot encode event log record event={event}: {error}"),
        }
    }

    /// Appends a free-form line (the startup banner), in order with events.
    pub fn line(&self, text: impl Into<String>) {
        let _ = self.lines.send(text.into().into_bytes());
    }
}

fn write_lines(incoming: mpsc::Receiver<Vec<u8>>, out: impl Write, prefix: &[u8]) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = incoming.recv() {
        let mut batch = Some(first);
        while let Some(line) = batch {
            let written = out
                .write_all(prefix)
                .and_then(|()| out.write_all(&line))
                .and_then(|()| out.write_all(b"\n"));
            if written.is_err() {
                return;
            }
            batch = incoming.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}
