//! The hub's Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters and the latency histogram are updated by the sequencer as things
//! happen; gauges (connections, orders by state) are set from the sequencer's
//! state when scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Self {
        let registry = Registry::new();
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
        for collector in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refusals.clone()),
            Box::new(connections.clone()),
            Box::new(orders.clone()),
            Box::new(delivery_seconds.clone()),
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

    /// An order was delivered `seconds` after its pickup.
    pub fn delivered_after(&self, seconds: f64) {
        self.delivery_seconds.observe(seconds.max(0.0));
    }

    /// The text exposition, with gauges set from `counts` and `connections`
    /// (vendors, drivers, viewers).
    pub fn render(&self, counts: &OrderCounts, connections: [(&str, usize); 3]) -> String {
        for (state, count) in [
            ("ready", counts.ready),
            ("assigned", counts.assigned),
            ("in-transit", counts.in_transit),
            ("delivered", counts.delivered),
        ] {
            self.orders.with_label_values(&[state]).set(count as i64);
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
