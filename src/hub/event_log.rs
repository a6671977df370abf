//! The hub's event log: one `EVENT {json}` line on stdout per inbound CAPS event.
//!
//! Lines are appended to a shared buffer that a background thread writes out
//! every few milliseconds, so a slow stdout (a full pipe, a terminal) never
//! blocks the hub's async workers, and a busy hub pays one write and no
//! thread wake-up per event. The buffer is bounded: when stdout does not keep
//! up (nobody reads it) or fails (closed), lines are dropped and counted
//! (`caps_event_log_dropped_total`), with one warning, and dispatch goes on.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::protocol::Event;

/// How long a line may wait in the buffer before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// The most bytes waiting for stdout; lines beyond are dropped.
const MAX_BUFFERED: usize = 1024 * 1024;

/// A cheap handle for appending to the event log; clone it freely.
pub struct EventLog {
    shared: Arc<Shared>,
    prefix: Arc<[u8]>,
    /// Write each line at once (the demo, where lines interleave with the
    /// roles' own) instead of within [`FLUSH_EVERY`].
    eager: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
    /// Lines dropped because stdout did not keep up or failed.
    dropped: Arc<AtomicU64>,
    /// Set once stdout failed: nothing more is buffered.
    failed: AtomicBool,
    /// Set once the drop was reported.
    warned: AtomicBool,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// Handles still alive; the writer stops when none is left.
    handles: usize,
}

#[derive(Serialize)]
struct LogLine<'a, P: Serialize> {
    event: Event,
    time: String,
    payload: &'a P,
}

impl EventLog {
    /// A log that writes to the process's stdout.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// A log on stdout whose lines start with `[tag] `, written at once, for
    /// a terminal shared with other roles (the demo).
    pub fn tagged_stdout(tag: &str) -> Self {
        let mut log = Self::start(std::io::stdout(), format!("[{tag}] ").into_bytes());
        log.eager = true;
        log
    }

    /// A log that writes to `out` from a background thread; the thread ends
    /// when the last handle is dropped, after writing everything it was given.
    pub fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self::start(out, Vec::new())
    }

    fn start(out: impl Write + Send + 'static, prefix: Vec<u8>) -> Self {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::new(),
                handles: 1,
            }),
            wake: Condvar::new(),
            dropped: Arc::new(AtomicU64::new(0)),
            failed: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("caps-event-log".into())
            .spawn(move || write_out(&writer, out))
            .expect("spawning the event log thread");
        EventLog {
            shared,
            prefix: prefix.into(),
            eager: false,
        }
    }

    /// Appends one line: `EVENT {"event":…,"time":…,"payload":…}`.
    pub fn record(&self, event: Event, payload: &impl Serialize) {
        let record = LogLine {
            event,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            payload,
        };
        let mut buffer = self.lock();
        if buffer.bytes.len() >= MAX_BUFFERED || self.shared.failed.load(Ordering::Relaxed) {
            drop(buffer);
            return self.drop_line();
        }
        let start = buffer.bytes.len();
        buffer.bytes.extend_from_slice(&self.prefix);
        buffer.bytes.extend_from_slice(b"EVENT ");
        if let Err(error) = serde_json::to_writer(&mut buffer.bytes, &record) {
            buffer.bytes.truncate(start);
            log::error!("cannot encode event log record event={event}: {error}");
            return;
        }
        buffer.bytes.push(b'\n');
        drop(buffer);
        if self.eager {
            self.shared.wake.notify_one();
        }
    }

    /// Appends a free-form line (the startup banner), in order with events,
    /// and writes it out at once.
    pub fn line(&self, text: impl AsRef<str>) {
        let mut buffer = self.lock();
        buffer.bytes.extend_from_slice(&self.prefix);
        buffer.bytes.extend_from_slice(text.as_ref().as_bytes());
        buffer.bytes.push(b'\n');
        drop(buffer);
        self.shared.wake.notify_one();
    }

    /// How many lines were dropped so far, shared with whoever reports it.
    pub fn dropped_lines(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.dropped)
    }

    fn drop_line(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.shared.warned.swap(true, Ordering::Relaxed) {
            log::warn!(
                "stdout is not keeping up (or failed): dropping event log lines; \
                 caps_event_log_dropped_total counts them"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.shared
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clone for EventLog {
    fn clone(&self) -> Self {
        self.lock().handles += 1;
        EventLog {
            shared: Arc::clone(&self.shared),
            prefix: Arc::clone(&self.prefix),
            eager: self.eager,
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let mut buffer = self.lock();
        buffer.handles = buffer.handles.saturating_sub(1);
        drop(buffer);
        self.shared.wake.notify_one();
    }
}

/// Every few milliseconds (or when told), writes what has been buffered.
fn write_out(shared: &Shared, out: impl Write) {
    let mut out = out;
    let mut pending = Vec::new();
    loop {
        let done = {
            let buffer = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            let (mut buffer, _) = shared
                .wake
                .wait_timeout(buffer, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut buffer.bytes, &mut pending);
            buffer.handles == 0
        };
        if !pending.is_empty() {
            if let Err(error) = out.write_all(&pending).and_then(|()| out.flush()) {
                log::warn!(
                    "cannot write the event log: {error}; its lines are dropped from now on"
                );
                shared.failed.store(true, Ordering::Relaxed);
                let lost = pending.iter().filter(|byte| **byte == b'\n').count() as u64;
                shared.dropped.fetch_add(lost, Ordering::Relaxed);
                return;
            }
            pending.clear();
        }
        if done {
            return;
        }
    }
}
