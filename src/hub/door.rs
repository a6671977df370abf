//! The hub's door, in front of every route (HTTP and Socket.IO alike): which
//! names a request may call the hub by, which web pages may call it, how many
//! connections it and each address may hold (counted from the first byte,
//! whatever comes next), and how fast one address or identity may use the
//! API and open sessions. It also copies a session-opening request's head out
//! of hyper's read buffer, which socketioxide would otherwise keep alive.
//!
//! The name check is the defence against DNS rebinding: a page on
//! `evil.example` whose name is made to resolve to 127.0.0.1 reaches the hub
//! with `Host: evil.example`. An IP literal cannot be rebound, and browsers
//! resolve `localhost` themselves, so those are always allowed; any other name
//! must be one the hub is published under (`--public-url`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::task::AtomicWaker;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;
use crate::protocol::{Ack, ErrorCode, Refusal};

/// What the door lets through.
#[derive(Debug, Clone)]
pub struct DoorConfig {
    /// Host names (lower case, no port) the hub is published under, besides
    /// IP literals and `localhost`.
    pub public_hosts: Vec<String>,
    /// Web origins allowed besides the hub's own; `*` for any.
    pub origins: Vec<String>,
    /// Most TCP connections held at once (in total).
    pub max_connections: usize,
    /// Most TCP connections held at once from one address.
    pub max_connections_per_address: usize,
    /// API requests and Socket.IO session openings per second, per address
    /// and per identity (bursts of twice that).
    pub requests_per_second: u32,
}

impl Default for DoorConfig {
    fn default() -> Self {
        DoorConfig {
            public_hosts: Vec::new(),
            origins: Vec::new(),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            requests_per_second: 100,
        }
    }
}

/// Whom a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Account {
    Address(IpAddr),
    Identity(String),
}

/// The door, shared by the listener, the middleware and the API handlers.
#[derive(Clone)]
pub struct Door(Arc<DoorState>);

struct DoorState {
    config: DoorConfig,
    /// TCP connections held: in total, and per address.
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
    requests: DefaultKeyedRateLimiter<Account>,
    /// When idle callers were last forgotten.
    swept: Mutex<Instant>,
    metrics: Arc<Metrics>,
}

/// Above this many callers remembered, the rate limiter forgets the idle ones
/// (at most every [`SWEEP_EVERY`]).
const CALLERS_KEPT: usize = 10_000;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Door {
    /// A door with `config`, counting its refusals in `metrics`.
    pub fn new(config: DoorConfig, metrics: Arc<Metrics>) -> Door {
        let rate = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("two is not zero"));
        Door(Arc::new(DoorState {
            requests: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            held: Mutex::new((0, HashMap::new())),
            swept: Mutex::new(
                Instant::now()
                    .checked_sub(SWEEP_EVERY)
                    .unwrap_or_else(Instant::now),
            ),
            config,
            metrics,
        }))
    }

    /// Whether a request naming the hub `host` (a `Host` header: a name or
    /// an address, perhaps with a port) may be served.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_without_port(host);
        if name.starts_with('[') || name.parse::<IpAddr>().is_ok() {
            return true;
        }
        name.eq_ignore_ascii_case("localhost")
            || self
                .0
                .config
                .public_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }

    /// Whether a page from `origin` may call a hub it reached as `host`: its
    /// own pages, and the listed origins.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let listed = self
            .0
            .config
            .origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin));
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .zip(host)
            .is_some_and(|(origin_host, host)| origin_host.eq_ignore_ascii_case(host));
        listed || own
    }

    /// Charges one request to `identity` (e.g. a token's subject); false if
    /// it is over its rate (answer it with [`Door::too_many_requests`]).
    pub fn charge_identity(&self, identity: String) -> bool {
        self.charge(Account::Identity(identity))
    }

    fn charge(&self, caller: Account) -> bool {
        let requests = &self.0.requests;
        // Forget idle callers now and then (not on every request: a sweep
        // walks them all), so the table holds the active ones only.
        if requests.len() > CALLERS_KEPT {
            let mut swept = self.0.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.elapsed() >= SWEEP_EVERY {
                requests.retain_recent();
                requests.shrink_to_fit();
                *swept = Instant::now();
            }
        }
        requests.check_key(&caller).is_ok()
    }

    /// The answer to a request over its caller's rate.
    pub fn too_many_requests(&self) -> Response {
        self.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "more than {} requests a second; slow down",
                self.0.config.requests_per_second
            ),
        )
    }

    /// Takes one connection from `address`, or says why not.
    fn enter(&self, address: IpAddr) -> Result<Held, Refusal> {
        let config = &self.0.config;
        let mut held = self.0.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_address) = &mut *held;
        let from_address = per_address.get(&address).copied().unwrap_or(0);
        let refusal = if *total >= config.max_connections {
            format!(
                "the hub holds its maximum of {} connections",
                config.max_connections
            )
        } else if from_address >= config.max_connections_per_address {
            format!(
                "the hub holds its maximum of {} connections from {address}",
                config.max_connections_per_address
            )
        } else {
            *total += 1;
            per_address.insert(address, from_address + 1);
            return Ok(Held {
                door: self.clone(),
                address,
            });
        };
        self.0
            .metrics
            .refusal(ErrorCode::TooManyConnections.as_str());
        Err(Refusal::new(ErrorCode::TooManyConnections, refusal))
    }

    fn leave(&self, address: IpAddr) {
        let mut held = self.0.held.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_address) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(count) = per_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&address);
            }
        }
    }

    fn refuse(&self, status: StatusCode, code: ErrorCode, message: String) -> Response {
        self.0.metrics.refusal(code.as_str());
        (status, Json(Ack::refused(Refusal::new(code, message)))).into_response()
    }
}

/// The middleware in front of every route: the name, the page, and the
/// rate of API calls and session openings of the caller's address.
pub async fn screen(State(door): State<Door>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = host_of(headers, &request);
    if let Some(host) = &host
        && !door.host_allowed(host)
    {
        log::debug!("refused a request for host {host:?}");
        return door.refuse(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::HostNotAllowed,
            format!("this hub is not served as {host} (see --public-url)"),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !door.origin_allowed(origin, host.as_deref()) {
            return door.refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::OriginNotAllowed,
                format!("pages from {origin} may not call this hub (see --cors-origin)"),
            );
        }
    }
    let opens_session = opens_session(&request);
    if (opens_session || is_api(&request))
        && let Some(ConnectInfo(Remote { address, .. })) =
            request.extensions().get::<ConnectInfo<Remote>>()
        && !door.charge(Account::Address(address.ip()))
    {
        return door.too_many_requests();
    }
    let request = if opens_session {
        detach_from_read_buffer(request)
    } else {
        request
    };
    next.run(request).await
}

/// The request with its URI and headers copied out of the connection's
/// read buffer. hyper parses them as slices of that buffer (16 KiB), and
/// socketioxide keeps a session's request head for the session's life: a
/// shared slice would keep the whole buffer alive for every connection.
pub fn detach_from_read_buffer(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse::<axum::http::Uri>() {
        parts.uri = uri.clone();
        if parts
            .extensions
            .remove::<axum::extract::OriginalUri>()
            .is_some()
        {
            parts.extensions.insert(axum::extract::OriginalUri(uri));
        }
    }
    Request::from_parts(parts, body)
}

/// API calls and metrics are rate limited per address.
fn is_api(request: &Request) -> bool {
    let path = request.uri().path();
    path.starts_with("/api/") || path == "/metrics"
}

/// The opening of a Socket.IO session (an engine.io handshake: no `sid`
/// yet) is rate limited per address; the requests of a session already
/// open are paced by the event limit instead.
fn opens_session(request: &Request) -> bool {
    let path = request.uri().path();
    path.starts_with("/socket.io")
        && !request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.starts_with("sid="))
}

fn host_of(headers: &HeaderMap, request: &Request) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))
}

/// `host` without a trailing `:port` (an IPv6 literal keeps its brackets).
fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

/// Where a request came from, as the hub's listener accepted it, and the
/// switch that cuts its TCP connection.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The peer's address.
    pub address: SocketAddr,
    /// Cuts the connection the request came on.
    pub hangup: Hangup,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CountingListener>>
    for Remote
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CountingListener>) -> Self {
        Remote {
            address: *stream.remote_addr(),
            hangup: stream.io().hangup.clone(),
        }
    }
}

/// Cuts one TCP connection from the hub's side, whatever is queued to be
/// written to it: a Socket.IO disconnect is a packet, and a client that
/// never reads has no room left for it in its buffer.
#[derive(Debug, Clone, Default)]
pub struct Hangup(Arc<HangupState>);

#[derive(Debug, Default)]
struct HangupState {
    cut: AtomicBool,
    /// The task reading the connection, woken to see the cut.
    reader: AtomicWaker,
}

impl Hangup {
    /// Cuts the connection: its next read and write fail, and whoever
    /// serves it (hyper, the WebSocket) drops it, closing the socket.
    pub fn cut(&self) {
        self.0.cut.store(true, Ordering::Release);
        self.0.reader.wake();
    }

    fn is_cut(&self) -> bool {
        self.0.cut.load(Ordering::Acquire)
    }
}

fn hung_up() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the hub hung up")
}

/// One TCP connection held; it leaves the count when dropped.
struct Held {
    door: Door,
    address: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.door.leave(self.address);
    }
}

/// The hub's listener: every TCP connection counts against the limits from
/// its first byte; one over them is answered `503` and closed.
pub struct CountingListener {
    inner: TcpListener,
    door: Door,
}

impl CountingListener {
    /// Counts the connections `inner` accepts against `door`.
    pub fn new(inner: TcpListener, door: Door) -> Self {
        CountingListener { inner, door }
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
            // Small messages must not wait for Nagle's algorithm.
            if let Err(error) = stream.set_nodelay(true) {
                log::debug!("cannot set TCP_NODELAY: {error}");
            }
            match self.door.enter(address.ip()) {
                Ok(held) => {
                    return (
                        CountedStream {
                            stream,
                            hangup: Hangup::default(),
                            _held: held,
                        },
                        address,
                    );
                }
                Err(refusal) => turn_away(&stream, &refusal),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over the limits with a `503` in the API's shape, if
/// its socket takes it at once, and lets it close.
fn turn_away(stream: &TcpStream, refusal: &Refusal) {
    let body = serde_json::to_string(&Ack::refused(refusal.clone())).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// A TCP connection that holds its place in the count while open, and can
/// be hung up on.
pub struct CountedStream {
    stream: TcpStream,
    hangup: Hangup,
    _held: Held,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.hangup.0.reader.register(cx.waker());
        if self.hangup.is_cut() {
            return Poll::Ready(Err(hung_up()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hangup.is_cut() {
            return Poll::Ready(Err(hung_up()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.hangup.is_cut() {
            return Poll::Ready(Err(hung_up()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door_with(public: &[&str], origins: &[&str]) -> Door {
        let config = DoorConfig {
            public_hosts: public.iter().map(|h| h.to_string()).collect(),
            origins: origins.iter().map(|o| o.to_string()).collect(),
            max_connections: 3,
            max_connections_per_address: 2,
            requests_per_second: 1,
        };
        Door::new(config, Arc::new(Metrics::new(Default::default())))
    }

    #[test]
    fn addresses_and_localhost_are_always_allowed_names_only_if_published() {
        let door = door_with(&["caps.example.com"], &[]);
        for allowed in [
            "127.0.0.1:3000",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:3000",
            "[::1]",
            "localhost:3000",
            "LOCALHOST",
            "caps.example.com",
            "Caps.Example.com:443",
        ] {
            assert!(door.host_allowed(allowed), "{allowed}");
        }
        for refused in [
            "evil.example:3000",
            "evil.example",
            "localhost.evil.example",
            "caps.example.com.evil.example",
            "",
        ] {
            assert!(!door.host_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn pages_may_call_their_own_hub_and_the_listed_origins_only() {
        let door = door_with(&[], &["https://shop.example"]);
        let host = Some("127.0.0.1:3000");
        assert!(door.origin_allowed("http://127.0.0.1:3000", host));
        assert!(door.origin_allowed("https://shop.example", host));
        assert!(!door.origin_allowed("http://evil.example:3000", host));
        assert!(!door.origin_allowed("http://127.0.0.1:3001", host));
        assert!(!door.origin_allowed("null", host));
        assert!(!door.origin_allowed("http://127.0.0.1:3000", None));
        assert!(door_with(&[], &["*"]).origin_allowed("http://anything.example", host));
    }

    #[test]
    fn connections_are_counted_in_total_and_per_address() {
        let door = door_with(&[], &[]);
        let (a, b, c) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let first = door.enter(a).unwrap();
        let _second = door.enter(a).unwrap();
        assert!(door.enter(a).is_err(), "two per address");
        let _third = door.enter(b).unwrap();
        assert!(door.enter(c).is_err(), "three in total");
        drop(first);
        assert!(door.enter(c).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn a_session_request_detached_from_the_read_buffer_keeps_its_head() {
        let request = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-shop", "acme")
            .extension(axum::extract::OriginalUri(
                "/socket.io/?EIO=4&transport=websocket".parse().unwrap(),
            ))
            .body(axum::body::Body::empty())
            .unwrap();
        let detached = detach_from_read_buffer(request);
        assert_eq!(detached.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(
            detached.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(detached.headers()["x-shop"], "acme");
        let original = detached.extensions().get::<axum::extract::OriginalUri>();
        assert_eq!(original.unwrap().0, "/socket.io/?EIO=4&transport=websocket");
    }

    #[test]
    fn idle_callers_are_forgotten_past_the_callers_kept() {
        let door = Door::new(
            DoorConfig {
                requests_per_second: 1_000_000,
                ..DoorConfig::default()
            },
            Arc::new(Metrics::new(Default::default())),
        );
        for n in 0..=CALLERS_KEPT {
            assert!(door.charge_identity(format!("driver name=d{n}")));
        }
        assert_eq!(door.0.requests.len(), CALLERS_KEPT + 1);
        // Each refilled a microsecond after its one request: idle now.
        assert!(door.charge_identity("driver name=last".into()));
        assert!(
            door.0.requests.len() < CALLERS_KEPT,
            "{} callers kept",
            door.0.requests.len()
        );
    }

    #[test]
    fn requests_are_limited_per_caller() {
        let door = door_with(&[], &[]);
        let charges = (0..5)
            .filter(|_| door.charge_identity("vendor acme".into()))
            .count();
        assert_eq!(charges, 2, "a burst of twice the rate");
        assert!(door.charge_identity("vendor globex".into()));
    }
}
