//! The hub's Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters and the latency histogram are updated by the sequencer as things
//! happen; gauges (connections, orders by state) are set from the sequencer's
//! state when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::api::OrderCounts;

/// The hub's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    refusals: IntCounterVec,
    connections: IntGaugeVec,
    orders: IntGaugeVec,
    delivery_seconds: Histogram,
    pending_events: IntGauge,
    group: IntCounterVec,
    log_dropped: IntCounter,
    /// The event log's own count of dropped lines.
    log_dropped_source: Arc<AtomicU64>,
}

impl Metrics {
    /// A fresh set, registered; `log_dropped` is the event log's count of
    /// dropped lines.
    pub fn new(log_dropped: Arc<AtomicU64>) -> Self {
        Metrics::labelled(log_dropped, None)
    }

    /// A fresh set whose every series carries `hub="<id>"` when the hub is
    /// one of a group (each hub is scraped on its own; the orders are the
    /// group's, the rest this hub's).
    pub fn labelled(log_dropped: Arc<AtomicU64>, hub: Option<&str>) -> Self {
        let labels = hub.map(|hub| [("hub".to_owned(), hub.to_owned())].into_iter().collect());
        let registry = Registry::new_custom(None, labels).expect("a valid hub label");
        let events = IntCounterVec::new(
            Opts::new(
                "caps_events_total",
                "CAPS events from clients that reached the hub's sequencer, by event",
            ),
            &["event"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "caps_refusals_total",
                "Events and connections refused, by error code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(
            Opts::new("caps_connections", "Connected clients, by role"),
            &["role"],
        )
        .expect("valid metric");
        let orders = IntGaugeVec::new(
            Opts::new(
                "caps_orders",
                "Orders by state (delivered: since the data dir was created)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "caps_delivery_seconds",
                "End-to-end delivery latency: pickup accepted to delivered",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
        )
        .expect("valid metric");
        let pending_events = IntGauge::new(
            "caps_pending_events",
            "Events taken and not yet answered (the hub's memory budget; busy beyond it)",
        )
        .expect("valid metric");
        let group = IntCounterVec::new(
            Opts::new(
                "caps_group_total",
                "In a group of hubs: bridge messages published, dropped (the queue \
                 stays the truth), repeated from other hubs and connections lost; \
                 notices re-sent; hubs and orders taken over; orders taken waiting",
            ),
            &["what"],
        )
        .expect("valid metric");
        let log_dropped_counter = IntCounter::new(
            "caps_event_log_dropped_total",
            "Event log lines dropped because stdout did not keep up or failed",
        )
        .expect("valid metric");
        for collector in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(connections.clone()),
            Box::new(orders.clone()),
            Box::new(delivery_seconds.clone()),
            Box::new(pending_events.clone()),
            Box::new(group.clone()),
            Box::new(log_dropped_counter.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            events,
            refusals,
            connections,
            orders,
            delivery_seconds,
            pending_events,
            group,
            log_dropped: log_dropped_counter,
            log_dropped_source: log_dropped,
        }
    }

    /// An event was accepted.
    pub fn event(&self, name: &str) {
        self.events.with_label_values(&[name]).inc();
    }

    /// Something was refused with `code`.
    pub fn refusal(&self, code: &str) {
        self.refusals.with_label_values(&[code]).inc();
    }

    /// `count` more of `what` happened in the group (see `caps_group_total`).
    pub fn group(&self, what: &str, count: u64) {
        self.group.with_label_values(&[what]).inc_by(count);
    }

    /// An order was delivered `seconds` after its pickup.
    pub fn delivered_after(&self, seconds: f64) {
        self.delivery_seconds.observe(seconds.max(0.0));
    }

    /// The text exposition, with gauges set from `counts`, `connections`
    /// (vendors, drivers, viewers) and the events `pending`.
    pub fn render(
        &self,
        counts: &OrderCounts,
        connections: [(&str, usize); 3],
        pending: usize,
    ) -> String {
        self.pending_events.set(pending as i64);
        let dropped = self.log_dropped_source.load(Ordering::Relaxed);
        self.log_dropped
            .inc_by(dropped.saturating_sub(self.log_dropped.get()));
        for (state, count) in counts.iter() {
            self.orders
                .with_label_values(&[state.name()])
                .set(count as i64);
        }
        for (role, count) in connections {
            self.connections
                .with_label_values(&[role])
                .set(count as i64);
        }
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {error}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
