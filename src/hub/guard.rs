//! The hub's limits on what any one client can cost it: how many Socket.IO
//! connections it holds, how fast one connection may send, and how large a
//! payload may be. What is checked before a request reaches Socket.IO (names,
//! origins, TCP connections, API rates) is `door`'s.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::protocol::{ErrorCode, Refusal};

/// The limits, as configured.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections held at once (TCP connections, and Socket.IO ones).
    pub max_connections: usize,
    /// Most TCP connections held at once from one address.
    pub max_connections_per_address: usize,
    /// API requests and Socket.IO session openings per second, per address
    /// and per identity (bursts of twice that).
    pub requests_per_second: u32,
    /// Events per second one connection may send (bursts of twice that).
    pub events_per_second: u32,
    /// Largest event payload parsed, in bytes of JSON.
    pub max_event_bytes: usize,
    /// Largest engine.io message accepted, in bytes; more closes the connection.
    pub max_message_bytes: u64,
    /// Web origins allowed besides the hub's own (`*` for any).
    pub cors_origins: Vec<String>,
    /// Host names the hub is published under, besides IP literals and
    /// `localhost` (from `--public-url`).
    pub public_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            requests_per_second: 100,
            events_per_second: 200,
            max_event_bytes: 16 * 1024,
            max_message_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
            public_hosts: Vec::new(),
        }
    }
}

/// A connection refused this many events as over its rate within one
/// [`FLOOD_WINDOW`] is dropped.
const FLOOD_STRIKES: u32 = 100;
/// The window in which refusals are counted.
const FLOOD_WINDOW: Duration = Duration::from_secs(1);

/// Shared accounting for the limits.
#[derive(Clone)]
pub struct Guard {
    limits: Arc<Limits>,
    connections: Arc<AtomicUsize>,
    /// One clock for every budget: making one calibrates it (it reads the
    /// CPU's features), 4% of the hub's time while 19,000 drivers connected.
    clock: DefaultClock,
}

/// One connection's event budget, kept in its socket's extensions.
#[derive(Clone)]
pub struct Budget(Arc<BudgetState>);

struct BudgetState {
    limiter: DefaultDirectRateLimiter,
    /// Refusals in the current window, and when that window began.
    strikes: Mutex<(u32, Instant)>,
}

/// What the budget says about one more event.
pub enum Spend {
    /// Within the rate.
    Allowed,
    /// Over the rate: refuse the event.
    Refused,
    /// Over the rate for too long: drop the connection.
    Flooding,
}

impl Budget {
    /// Charges one event.
    pub fn spend(&self) -> Spend {
        if self.0.limiter.check().is_ok() {
            return Spend::Allowed;
        }
        let mut strikes = self
            .0
            .strikes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (count, since) = &mut *strikes;
        if since.elapsed() >= FLOOD_WINDOW {
            *count = 0;
            *since = Instant::now();
        }
        *count += 1;
        if *count >= FLOOD_STRIKES {
            Spend::Flooding
        } else {
            Spend::Refused
        }
    }

    /// A budget of `events_per_second`, with bursts of twice that.
    fn new(events_per_second: u32, clock: &DefaultClock) -> Budget {
        let rate = NonZeroU32::new(events_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("two is not zero"));
        Budget(Arc::new(BudgetState {
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            ),
            strikes: Mutex::new((0, Instant::now())),
        }))
    }
}

impl Guard {
    /// Accounting for `limits`.
    pub fn new(limits: Limits) -> Self {
        Guard {
            limits: Arc::new(limits),
            connections: Arc::new(AtomicUsize::new(0)),
            clock: DefaultClock::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one more connection, or refuses it when the hub is full. On
    /// success the caller must call [`Guard::release`] when it leaves.
    pub fn admit(&self) -> Result<Budget, Refusal> {
        if self.connections.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the hub holds its maximum of {} connections",
                    self.limits.max_connections
                ),
            ));
        }
        Ok(Budget::new(self.limits.events_per_second, &self.clock))
    }

    /// A connection admitted by [`Guard::admit`] has left.
    pub fn release(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Corrects the count from the namespace's real number of sockets (a
    /// socket that dies during its connect never reports leaving).
    pub fn recount(&self, live: usize) {
        self.connections.store(live, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_beyond_its_burst_then_calls_a_flood_a_flood() {
        let budget = Budget::new(10, &DefaultClock::default());
        let mut allowed = 0;
        let mut refused = 0;
        let mut flooding = false;
        for _ in 0..(20 + FLOOD_STRIKES as usize) {
            match budget.spend() {
                Spend::Allowed => allowed += 1,
                Spend::Refused => refused += 1,
                Spend::Flooding => flooding = true,
            }
        }
        assert!(
            (20..=22).contains(&allowed),
            "the burst, and perhaps a refill: {allowed}"
        );
        assert!(refused > 0);
        assert!(flooding);
    }
}
