//! A Prometheus endpoint: [`PrometheusSink`] turns every report into metrics and serves them
//! on `GET /metrics` in the OpenMetrics text format.
//!
//! Reports come in two flavours. Per-interval reports (the default) carry what happened since
//! the previous one, so their figures are added to the counters as they are. With `--no-reset`
//! the figures run from start, so the sink remembers the last value seen for each listener and
//! adds only the growth. Either way the counters only ever go up, which is what Prometheus's
//! `rate()` and `increase()` expect.
//!
//! Series are labelled by listener, never by remote address: the number of series stays bounded
//! by the number of listening sockets, however many clients connect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::task::JoinHandle;

use crate::hooks::{Capability, HookChoice};
use crate::model::{ErrorKind, Nanos};
use crate::observer::ListenerReport;
use crate::output::{Flow, ReportBatch, ReportSink};

/// The content type `GET /metrics` answers with; Prometheus picks its parser from it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every series of one listener carries these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    port: String,
    process: String,
}

/// Which hook serves a capability (`tracker_hook_info`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HookLabels {
    capability: String,
    hook: String,
}

/// The error counter adds the kind to the listener's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    listener: String,
    port: String,
    process: String,
    kind: String,
}

impl ErrorLabels {
    fn new(labels: &ListenerLabels, kind: ErrorKind) -> Self {
        Self {
            listener: labels.listener.clone(),
            port: labels.port.clone(),
            process: labels.process.clone(),
            kind: kind.name().to_owned(),
        }
    }
}

/// Seconds are fractional, so their counters hold an `f64`.
type SecondsCounter = Counter<f64, AtomicU64>;
/// A `Family` needs a constructor to give histograms their buckets; a plain function pointer
/// keeps the type nameable.
type HistogramFamily = Family<ListenerLabels, Histogram, fn() -> Histogram>;

/// Connection lifetimes from a millisecond to beyond an hour: 0.001 s doubled 22 times ends at
/// about 4194 s. Doubling keeps every bound a short decimal in the output.
fn lifetime_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 23))
}

/// Peak sessions per connection: 0 (nothing counted, or not HTTP), then powers of two to 1024
/// (HTTP/2 servers allow a few hundred streams per connection by default).
fn sessions_histogram() -> Histogram {
    Histogram::new(std::iter::once(0.0).chain(exponential_buckets(1.0, 2.0, 11)))
}

/// Handles on every metric; they share their values with the registry that encodes them.
struct Metrics {
    opened: Family<ListenerLabels, Counter>,
    closed: Family<ListenerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    connection_seconds: Family<ListenerLabels, SecondsCounter>,
    busy_seconds: Family<ListenerLabels, SecondsCounter>,
    lost_events: Counter,
    untracked_connections: Counter,
    listen_overflows: Counter,
    listen_drops: Counter,
    corrections: Family<ListenerLabels, Counter>,
    accept_queue: Family<ListenerLabels, Gauge>,
    accept_queue_peak: Family<ListenerLabels, Gauge>,
    accept_backlog: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Gauge>,
    connections_peak: Family<ListenerLabels, Gauge>,
    busy_connections: Family<ListenerLabels, Gauge>,
    sessions_peak: Family<ListenerLabels, Gauge>,
    sessions_unknown: Family<ListenerLabels, Gauge>,
    listener_up: Family<ListenerLabels, Gauge>,
    lifetime: HistogramFamily,
    peak_sessions: HistogramFamily,
    hook_info: Family<HookLabels, Gauge>,
    accepted: Family<ListenerLabels, Counter>,
    server_closed: Family<ListenerLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `tracker_` prefix.
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            opened: Family::default(),
            closed: Family::default(),
            errors: Family::default(),
            connection_seconds: Family::default(),
            busy_seconds: Family::default(),
            lost_events: Counter::default(),
            untracked_connections: Counter::default(),
            listen_overflows: Counter::default(),
            listen_drops: Counter::default(),
            corrections: Family::default(),
            accept_queue: Family::default(),
            accept_queue_peak: Family::default(),
            accept_backlog: Family::default(),
            connections: Family::default(),
            connections_peak: Family::default(),
            busy_connections: Family::default(),
            sessions_peak: Family::default(),
            sessions_unknown: Family::default(),
            listener_up: Family::default(),
            lifetime: Family::new_with_constructor(lifetime_histogram),
            peak_sessions: Family::new_with_constructor(sessions_histogram),
            hook_info: Family::default(),
            accepted: Family::default(),
            server_closed: Family::default(),
        };
        // Counter names get their `_total` suffix, and units their `_seconds`, from the
        // encoder; the names here are the stems.
        registry.register(
            "connections_opened",
            "Connections accepted by the listener",
            metrics.opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections of the listener that closed",
            metrics.closed.clone(),
        );
        registry.register(
            "errors",
            "Inconsistent event sequences seen by the connection model, by kind",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "connection",
            "Connection-seconds: the sum of the time connections were open",
            Unit::Seconds,
            metrics.connection_seconds.clone(),
        );
        registry.register_with_unit(
            "busy",
            "Busy-seconds: the sum of the time connections were serving a request",
            Unit::Seconds,
            metrics.busy_seconds.clone(),
        );
        registry.register(
            "lost_events",
            "Kernel events dropped because the ring buffer was full",
            metrics.lost_events.clone(),
        );
        registry.register(
            "untracked_connections",
            "Connections the kernel could not track because its table was full",
            metrics.untracked_connections.clone(),
        );
        registry.register(
            "listen_overflows",
            "Connections refused because an accept queue was full (network namespace)",
            metrics.listen_overflows.clone(),
        );
        registry.register(
            "listen_drops",
            "Connections dropped at a listener, overflows included (network namespace)",
            metrics.listen_drops.clone(),
        );
        registry.register(
            "corrections",
            "Connections the model added or closed to match the kernel's table",
            metrics.corrections.clone(),
        );
        registry.register(
            "accept_queue",
            "Connections waiting in the accept queue at the last sample",
            metrics.accept_queue.clone(),
        );
        registry.register(
            "accept_queue_peak",
            "Longest accept queue sampled in the last report's interval",
            metrics.accept_queue_peak.clone(),
        );
        registry.register(
            "accept_backlog",
            "The accept queue's limit (listen backlog)",
            metrics.accept_backlog.clone(),
        );
        registry.register(
            "connections",
            "Connections open at the last report",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_peak",
            "Most connections open at once in the last report's interval",
            metrics.connections_peak.clone(),
        );
        registry.register(
            "busy_connections",
            "Connections serving a request at the last report",
            metrics.busy_connections.clone(),
        );
        registry.register(
            "sessions_peak",
            "Most concurrent sessions on one connection in the last report's interval",
            metrics.sessions_peak.clone(),
        );
        registry.register(
            "sessions_unknown_connections",
            "Connections of the last report whose sessions could not be counted",
            metrics.sessions_unknown.clone(),
        );
        registry.register(
            "listener_up",
            "1 while the socket is listening, 0 once it has closed",
            metrics.listener_up.clone(),
        );
        registry.register_with_unit(
            "connection_lifetime",
            "How long closed connections lived",
            Unit::Seconds,
            metrics.lifetime.clone(),
        );
        registry.register(
            "connection_peak_sessions",
            "Most concurrent sessions over the life of each closed connection",
            metrics.peak_sessions.clone(),
        );
        registry.register(
            "hook_info",
            "1 for the kernel hook serving each capability; a capability without one has no \
             series, and neither have its figures",
            metrics.hook_info.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections the server accepted (absent where the kernel has no accept hook)",
            metrics.accepted.clone(),
        );
        registry.register(
            "connections_server_closed",
            "Connections the server closed itself (absent where the kernel has no close hook)",
            metrics.server_closed.clone(),
        );
        metrics
    }

    /// Drops the gauges of a label set that no longer describes its listener. Counters and
    /// histograms stay: a series that went up must not disappear, or `increase()` would be off.
    fn forget_gauges(&self, labels: &ListenerLabels) {
        for gauge in [
            &self.connections,
            &self.connections_peak,
            &self.busy_connections,
            &self.sessions_peak,
            &self.sessions_unknown,
            &self.listener_up,
            &self.accept_queue,
            &self.accept_queue_peak,
            &self.accept_backlog,
        ] {
            gauge.remove(labels);
        }
    }
}

/// The figures of a report that accumulate, as the last cumulative report gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cumulative {
    opened: u64,
    closed: u64,
    errors: [u64; ErrorKind::ALL.len()],
    conn_for_ns: Nanos,
    active_for_ns: Nanos,
    corrections: u64,
    accepted: u64,
    server_closed: u64,
}

impl Cumulative {
    fn of(report: &ListenerReport) -> Self {
        let snapshot = &report.snapshot;
        Self {
            opened: snapshot.opened,
            closed: snapshot.closed,
            errors: ErrorKind::ALL.map(|kind| snapshot.errors.get(kind)),
            conn_for_ns: snapshot.conn_for_ns,
            active_for_ns: snapshot.active_for_ns,
            corrections: report.corrections,
            accepted: report.accepted,
            server_closed: report.server_closed,
        }
    }

    /// What to add to the counters to go from `self` (the previous report) to `now`.
    fn growth_to(&self, now: &Self) -> Self {
        Self {
            opened: growth(self.opened, now.opened),
            closed: growth(self.closed, now.closed),
            errors: std::array::from_fn(|index| growth(self.errors[index], now.errors[index])),
            conn_for_ns: growth(self.conn_for_ns, now.conn_for_ns),
            active_for_ns: growth(self.active_for_ns, now.active_for_ns),
            corrections: growth(self.corrections, now.corrections),
            accepted: growth(self.accepted, now.accepted),
            server_closed: growth(self.server_closed, now.server_closed),
        }
    }
}

/// The increase of a cumulative figure. A figure that went down was restarted from zero (a
/// listener closed and reopened gets a fresh tracker), so all of it is new, as Prometheus
/// itself treats counter resets; a negative increase is never possible.
fn growth(previous: u64, now: u64) -> u64 {
    now.checked_sub(previous).unwrap_or(now)
}

fn seconds(ns: Nanos) -> f64 {
    // Lossy only beyond 2^53 ns (about 104 days in one report), and then by nanoseconds.
    ns as f64 / 1e9
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the sink remembers about a listener between reports.
#[derive(Debug)]
struct ListenerState {
    /// The labels its series were last given (the owning process can change).
    labels: ListenerLabels,
    /// Its figures in the last cumulative report (zero before the first, or in per-interval
    /// mode, where they are not needed).
    last: Cumulative,
}

/// The metrics and the memory needed to update them, behind one lock so that a scrape never
/// sees half a report.
struct Inner {
    registry: Registry,
    metrics: Metrics,
    listeners: HashMap<SocketAddr, ListenerState>,
    /// The global loss counters' values in the last cumulative report.
    last_lost_events: u64,
    last_untracked_connections: u64,
    last_listen_counters: (u64, u64),
}

impl Inner {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tracker");
        let metrics = Metrics::register(&mut registry);
        Self {
            registry,
            metrics,
            listeners: HashMap::new(),
            last_lost_events: 0,
            last_untracked_connections: 0,
            last_listen_counters: (0, 0),
        }
    }

    fn apply(&mut self, batch: &ReportBatch<'_>) {
        let totals = &batch.totals;
        let (lost, untracked) = if batch.per_interval {
            (totals.lost_events, totals.untracked_connections)
        } else {
            let lost = growth(self.last_lost_events, totals.lost_events);
            let untracked = growth(
                self.last_untracked_connections,
                totals.untracked_connections,
            );
            self.last_lost_events = totals.lost_events;
            self.last_untracked_connections = totals.untracked_connections;
            (lost, untracked)
        };
        self.metrics.lost_events.inc_by(lost);
        self.metrics.untracked_connections.inc_by(untracked);
        let listen = (totals.listen_overflows, totals.listen_drops);
        let (overflows, drops) = if batch.per_interval {
            listen
        } else {
            let added = (
                growth(self.last_listen_counters.0, listen.0),
                growth(self.last_listen_counters.1, listen.1),
            );
            self.last_listen_counters = listen;
            added
        };
        self.metrics.listen_overflows.inc_by(overflows);
        self.metrics.listen_drops.inc_by(drops);
        for (capability, hook) in totals.hooks.iter() {
            if let Some(hook) = hook {
                self.metrics
                    .hook_info
                    .get_or_create(&HookLabels {
                        capability: capability.name().to_owned(),
                        hook: hook.to_owned(),
                    })
                    .set(1);
            }
        }
        for report in batch.reports {
            self.apply_listener(report, batch.per_interval, &totals.hooks);
        }
    }

    fn apply_listener(&mut self, report: &ListenerReport, per_interval: bool, hooks: &HookChoice) {
        let metrics = &self.metrics;
        let labels = ListenerLabels {
            listener: report.snapshot.name.clone(),
            port: report.listener.port().to_string(),
            process: report
                .owners
                .first()
                .map(|owner| owner.comm.clone())
                .unwrap_or_default(),
        };
        let state = self
            .listeners
            .entry(report.listener)
            .or_insert_with(|| ListenerState {
                labels: labels.clone(),
                last: Cumulative::default(),
            });
        if state.labels != labels {
            // The owner became known (or changed): the gauges move to the new labels, or two
            // series would claim the listener's current state.
            metrics.forget_gauges(&state.labels);
            state.labels = labels.clone();
        }

        let figures = Cumulative::of(report);
        let added = if per_interval {
            figures
        } else {
            let added = state.last.growth_to(&figures);
            state.last = figures;
            added
        };
        metrics.opened.get_or_create(&labels).inc_by(added.opened);
        metrics.closed.get_or_create(&labels).inc_by(added.closed);
        for (kind, count) in ErrorKind::ALL.into_iter().zip(added.errors) {
            // Created even at zero, so that every kind is visible from the first scrape.
            metrics
                .errors
                .get_or_create(&ErrorLabels::new(&labels, kind))
                .inc_by(count);
        }
        metrics
            .connection_seconds
            .get_or_create(&labels)
            .inc_by(seconds(added.conn_for_ns));
        // The figures of a capability no hook serves have no series at all (not zeroes).
        let turns = hooks.has(Capability::Turns);
        if turns {
            metrics
                .busy_seconds
                .get_or_create(&labels)
                .inc_by(seconds(added.active_for_ns));
        }
        if hooks.has(Capability::Accept) {
            metrics
                .accepted
                .get_or_create(&labels)
                .inc_by(added.accepted);
        }
        if hooks.has(Capability::Close) {
            metrics
                .server_closed
                .get_or_create(&labels)
                .inc_by(added.server_closed);
        }

        let snapshot = &report.snapshot;
        let set = |family: &Family<ListenerLabels, Gauge>, value: i64| {
            family.get_or_create(&labels).set(value);
        };
        set(&metrics.connections, gauge_value(snapshot.curr));
        set(&metrics.connections_peak, gauge_value(snapshot.peak));
        if turns {
            set(&metrics.busy_connections, gauge_value(snapshot.busy));
            set(&metrics.sessions_peak, gauge_value(snapshot.peak_sessions));
        }
        set(
            &metrics.sessions_unknown,
            i64::try_from(report.sessions_unknown).unwrap_or(i64::MAX),
        );
        set(&metrics.listener_up, i64::from(!report.gone));
        set(&metrics.accept_queue, i64::from(report.accept_queue));
        set(
            &metrics.accept_queue_peak,
            i64::from(report.accept_queue_peak),
        );
        set(&metrics.accept_backlog, i64::from(report.accept_backlog));
        metrics
            .corrections
            .get_or_create(&labels)
            .inc_by(added.corrections);

        // Closed connections are listed once whatever the mode, so they are observed as given.
        let lifetime = metrics.lifetime.get_or_create(&labels);
        let peak_sessions = metrics.peak_sessions.get_or_create(&labels);
        for closed in &report.closed_connections {
            lifetime.observe(seconds(closed.lifetime_ns));
            peak_sessions.observe(f64::from(closed.peak_sessions));
        }

        if report.gone && snapshot.curr == 0 {
            // This is the listener's last report: the observer drops it. Should the address
            // listen again, its fresh tracker counts from zero, and so must the baseline. The
            // series themselves stay.
            state.last = Cumulative::default();
        }
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves at worst a half-applied report; the values are
    // still valid numbers, so keep serving them rather than failing every later scrape.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves /metrics; created before the daemon loop, fed every report.
pub struct PrometheusSink {
    inner: Shared,
    local_addr: SocketAddr,
    server: JoinHandle<()>,
}

impl PrometheusSink {
    /// Binds `addr`, spawns the HTTP server on the current tokio runtime and returns the sink.
    /// `GET /metrics` answers the OpenMetrics text format; any other path is a 404.
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for Prometheus on {addr}"))?;
        let local_addr = listener
            .local_addr()
            .with_context(|| format!("reading the address bound for Prometheus ({addr})"))?;
        let inner = Arc::new(Mutex::new(Inner::new()));
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .with_state(Arc::clone(&inner));
        // tokio::spawn rather than a thread: the daemon runs a current-thread runtime, and the
        // server only needs a turn whenever the event loop waits.
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                log::error!("Prometheus endpoint on {local_addr} stopped: {error}");
            }
        });
        Ok(Self {
            inner,
            local_addr,
            server,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for PrometheusSink {
    fn drop(&mut self) {
        // Without the sink nothing updates the metrics any more: stop serving stale ones.
        self.server.abort();
    }
}

impl ReportSink for PrometheusSink {
    fn publish(&mut self, batch: &ReportBatch<'_>) -> anyhow::Result<Flow> {
        lock(&self.inner).apply(batch);
        Ok(Flow::Continue)
    }
}

async fn serve_metrics(State(shared): State<Shared>) -> Response {
    let encoded = lock(&shared).encode();
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            log::error!("encoding the Prometheus metrics: {error}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::model::{ConnState, Tracker};
    use crate::observer::{ClosedConnection, Owner};
    use crate::output::IntervalTotals;

    const SEC: Nanos = 1_000_000_000;
    const LABELS: &str = r#"listener="127.0.0.1:8080",port="8080",process="nginx""#;

    fn remote(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn report(tracker: &mut Tracker<SocketAddr>, now: Nanos, reset: bool) -> ListenerReport {
        ListenerReport {
            owners: vec![Owner {
                pid: 7,
                comm: "nginx".into(),
                cmdline: String::new(),
            }],
            ..ListenerReport::quiet(
                "127.0.0.1:8080".parse().unwrap(),
                tracker.snapshot(now, reset),
            )
        }
    }

    fn closed(lifetime_ns: Nanos, peak_sessions: u32) -> ClosedConnection {
        ClosedConnection {
            lifetime_ns,
            peak_sessions,
        }
    }

    /// The same traffic in two reports, made with `reset` as the daemon would: three
    /// connections, one of which closes in the first interval and one in the second; an error
    /// in each interval; ring buffer losses in both.
    fn two_reports(reset: bool) -> [(ListenerReport, IntervalTotals); 2] {
        let mut tracker = Tracker::new("127.0.0.1:8080");
        for port in 1..=3 {
            tracker.conn_state(remote(port), 0, ConnState::New);
        }
        tracker.conn_state(remote(1), SEC, ConnState::Active);
        tracker.conn_state(remote(1), 2 * SEC, ConnState::Closed);
        tracker.conn_state(remote(9), 2 * SEC, ConnState::Idle);
        let mut first = report(&mut tracker, 4 * SEC, reset);
        first.closed_connections = vec![closed(2 * SEC, 0)];
        tracker.conn_state(remote(2), 5 * SEC, ConnState::Active);
        tracker.conn_state(remote(2), 6 * SEC, ConnState::Closed);
        tracker.conn_state(remote(8), 6 * SEC, ConnState::Idle);
        let mut second = report(&mut tracker, 8 * SEC, reset);
        second.closed_connections = vec![closed(6 * SEC, 3)];
        let totals = |lost_events| IntervalTotals {
            unix_time_s: 0.0,
            interval_s: 4.0,
            lost_events,
            untracked_connections: 1,
            listen_overflows: 0,
            listen_drops: 0,
            hooks: all_hooks(),
        };
        // Per interval: 2 then 3 events lost. From start: 2 then 5.
        let second_lost = if reset { 3 } else { 5 };
        let second_untracked = if reset { 0 } else { 1 };
        [
            (first, totals(2)),
            (
                second,
                IntervalTotals {
                    untracked_connections: second_untracked,
                    listen_overflows: 0,
                    listen_drops: 0,
                    ..totals(second_lost)
                },
            ),
        ]
    }

    /// Every capability served, as on a kernel with fentry.
    fn all_hooks() -> HookChoice {
        let mut hooks = HookChoice::default();
        hooks.set(
            Capability::Lifecycle,
            Some("raw tracepoint inet_sock_set_state"),
        );
        hooks.set(Capability::Turns, Some("fexit tcp_recvmsg/tcp_sendmsg"));
        hooks.set(Capability::Accept, Some("fexit inet_csk_accept"));
        hooks.set(Capability::Close, Some("fentry tcp_close"));
        hooks
    }

    #[test]
    fn hooks_are_named_and_unserved_figures_have_no_series() {
        let mut hooks = all_hooks();
        hooks.set(Capability::Turns, None);
        hooks.set(Capability::Close, None);
        let [(report, totals), _] = two_reports(true);
        let mut sink = Inner::new();
        publish(&mut sink, &report, IntervalTotals { hooks, ..totals }, true);
        let text = sink.encode().unwrap();
        assert!(
            text.contains(
                "tracker_hook_info{capability=\"accept\",hook=\"fexit inet_csk_accept\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("capability=\"turns\""), "{text}");
        assert!(
            text.contains("tracker_connections_accepted_total{"),
            "{text}"
        );
        for absent in [
            "tracker_busy_seconds_total{",
            "tracker_busy_connections{",
            "tracker_sessions_peak{",
            "tracker_connections_server_closed_total{",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    fn publish(sink: &mut Inner, report: &ListenerReport, totals: IntervalTotals, reset: bool) {
        sink.apply(&ReportBatch {
            reports: std::slice::from_ref(report),
            totals,
            per_interval: reset,
        });
    }

    /// The value of the sample line `name{labels}`, which must be there exactly once.
    fn sample(text: &str, series: &str) -> String {
        let prefix = format!("{series} ");
        let values: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .collect();
        assert_eq!(values.len(), 1, "{series} in:\n{text}");
        values[0].to_owned()
    }

    fn assert_after_two_reports(text: &str) {
        let expect = |series: &str, value: &str| assert_eq!(sample(text, series), value, "{text}");
        expect(
            &format!("tracker_connections_opened_total{{{LABELS}}}"),
            "3",
        );
        expect(
            &format!("tracker_connections_closed_total{{{LABELS}}}"),
            "2",
        );
        expect(
            &format!(r#"tracker_errors_total{{{LABELS},kind="no_conn_in_map"}}"#),
            "2",
        );
        expect(
            &format!(r#"tracker_errors_total{{{LABELS},kind="conns_lost"}}"#),
            "0",
        );
        // Open time: 2 s + 6 s for the closed ones, 8 s for the one still open.
        expect(
            &format!("tracker_connection_seconds_total{{{LABELS}}}"),
            "16.0",
        );
        expect(&format!("tracker_busy_seconds_total{{{LABELS}}}"), "2.0");
        expect("tracker_lost_events_total", "5");
        expect("tracker_untracked_connections_total", "1");
        expect(&format!("tracker_connections{{{LABELS}}}"), "1");
        expect(&format!("tracker_listener_up{{{LABELS}}}"), "1");
        expect(
            &format!("tracker_connection_lifetime_seconds_count{{{LABELS}}}"),
            "2",
        );
        expect(
            &format!("tracker_connection_lifetime_seconds_sum{{{LABELS}}}"),
            "8.0",
        );
        expect(
            &format!(r#"tracker_connection_lifetime_seconds_bucket{{le="2.048",{LABELS}}}"#),
            "1",
        );
        expect(
            &format!(r#"tracker_connection_lifetime_seconds_bucket{{le="8.192",{LABELS}}}"#),
            "2",
        );
        expect(
            &format!("tracker_connection_peak_sessions_count{{{LABELS}}}"),
            "2",
        );
        expect(
            &format!(r#"tracker_connection_peak_sessions_bucket{{le="0.0",{LABELS}}}"#),
            "1",
        );
        expect(
            &format!(r#"tracker_connection_peak_sessions_bucket{{le="4.0",{LABELS}}}"#),
            "2",
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn per_interval_reports_are_added_up() {
        let mut sink = Inner::new();
        let [(first, first_totals), (second, second_totals)] = two_reports(true);
        publish(&mut sink, &first, first_totals, true);
        let text = sink.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                &format!("tracker_connections_opened_total{{{LABELS}}}")
            ),
            "3"
        );
        assert_eq!(
            sample(&text, &format!("tracker_connections_peak{{{LABELS}}}")),
            "3"
        );
        publish(&mut sink, &second, second_totals, true);
        let text = sink.encode().unwrap();
        assert_after_two_reports(&text);
        // The peak of the second interval only: the reset brought it down to the 2 open then.
        assert_eq!(
            sample(&text, &format!("tracker_connections_peak{{{LABELS}}}")),
            "2"
        );
    }

    #[test]
    fn cumulative_reports_add_only_their_growth() {
        let mut sink = Inner::new();
        let [(first, first_totals), (second, second_totals)] = two_reports(false);
        // Cumulative figures: the second report repeats the first one's.
        assert_eq!(second.snapshot.opened, 3);
        publish(&mut sink, &first, first_totals, false);
        publish(&mut sink, &second, second_totals, false);
        let text = sink.encode().unwrap();
        assert_after_two_reports(&text);
        // The same report again adds nothing.
        publish(&mut sink, &second, second_totals, false);
        let again = sink.encode().unwrap();
        assert_eq!(
            sample(
                &again,
                &format!("tracker_connections_opened_total{{{LABELS}}}")
            ),
            "3"
        );
        assert_eq!(sample(&again, "tracker_lost_events_total"), "5");
    }

    #[test]
    fn cumulative_figures_that_restart_count_from_zero() {
        assert_eq!(growth(3, 5), 2);
        assert_eq!(growth(5, 5), 0);
        assert_eq!(growth(5, 2), 2);
    }

    #[test]
    fn gone_listener_keeps_its_counters_and_is_down() {
        let mut sink = Inner::new();
        let mut tracker = Tracker::new("127.0.0.1:8080");
        tracker.conn_state(remote(1), 0, ConnState::New);
        tracker.conn_state(remote(1), SEC, ConnState::Closed);
        let mut last = report(&mut tracker, SEC, false);
        last.gone = true;
        publish(&mut sink, &last, IntervalTotals::default(), false);
        // Later reports no longer list it.
        sink.apply(&ReportBatch {
            reports: &[],
            totals: IntervalTotals::default(),
            per_interval: false,
        });
        let text = sink.encode().unwrap();
        assert_eq!(
            sample(&text, &format!("tracker_listener_up{{{LABELS}}}")),
            "0"
        );
        assert_eq!(
            sample(
                &text,
                &format!("tracker_connections_opened_total{{{LABELS}}}")
            ),
            "1"
        );
        // Listening again with a fresh tracker: its first figures are all new.
        let mut fresh = Tracker::new("127.0.0.1:8080");
        fresh.conn_state(remote(2), 2 * SEC, ConnState::New);
        publish(
            &mut sink,
            &report(&mut fresh, 3 * SEC, false),
            IntervalTotals::default(),
            false,
        );
        let text = sink.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                &format!("tracker_connections_opened_total{{{LABELS}}}")
            ),
            "2"
        );
        assert_eq!(
            sample(&text, &format!("tracker_listener_up{{{LABELS}}}")),
            "1"
        );
    }

    #[test]
    fn owner_change_moves_gauges_but_keeps_counters() {
        let mut sink = Inner::new();
        let mut tracker = Tracker::new("127.0.0.1:8080");
        tracker.conn_state(remote(1), 0, ConnState::New);
        let mut unowned = report(&mut tracker, SEC, true);
        unowned.owners.clear();
        publish(&mut sink, &unowned, IntervalTotals::default(), true);
        tracker.conn_state(remote(2), SEC, ConnState::New);
        publish(
            &mut sink,
            &report(&mut tracker, 2 * SEC, true),
            IntervalTotals::default(),
            true,
        );
        let text = sink.encode().unwrap();
        let unowned_labels = r#"listener="127.0.0.1:8080",port="8080",process="""#;
        assert_eq!(
            sample(
                &text,
                &format!("tracker_connections_opened_total{{{unowned_labels}}}")
            ),
            "1"
        );
        assert_eq!(
            sample(
                &text,
                &format!("tracker_connections_opened_total{{{LABELS}}}")
            ),
            "1"
        );
        assert_eq!(
            sample(&text, &format!("tracker_connections{{{LABELS}}}")),
            "2"
        );
        assert!(
            !text.contains(&format!("tracker_connections{{{unowned_labels}}}")),
            "{text}"
        );
    }

    /// `GET path` over a plain socket: the status code, the content type and the body.
    fn http_get(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
        let mut stream = TcpStream::connect(addr).expect("connecting to the endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers: {response}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {response}"));
        let content_type = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        });
        (status, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let mut sink = PrometheusSink::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = sink.local_addr();
        assert_ne!(addr.port(), 0);
        let mut tracker = Tracker::new("127.0.0.1:8080");
        tracker.conn_state(remote(1), 0, ConnState::New);
        let flow = sink
            .publish(&ReportBatch {
                reports: &[report(&mut tracker, SEC, true)],
                totals: IntervalTotals::default(),
                per_interval: true,
            })
            .unwrap();
        assert_eq!(flow, Flow::Continue);

        // The server runs on this (current-thread) runtime: the blocking client must not.
        let (metrics, other) = tokio::task::spawn_blocking(move || {
            (http_get(addr, "/metrics"), http_get(addr, "/other"))
        })
        .await
        .unwrap();
        let (status, content_type, body) = metrics;
        assert_eq!(status, 200, "{body}");
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(
            body.lines()
                .any(|line| line == format!("tracker_connections_opened_total{{{LABELS}}} 1")),
            "{body}"
        );
        assert_eq!(other.0, 404);
    }

    #[tokio::test]
    async fn address_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(error) = PrometheusSink::start(addr).await else {
            panic!("binding {addr} twice succeeded");
        };
        let message = format!("{error:#}");
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("in use"), "{message}");
    }
}
