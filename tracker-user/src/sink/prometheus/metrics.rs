//! The metrics the endpoint serves, their names, help texts and labels.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::model::ErrorKind;

/// Every series of one listener carries these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: String,
    pub(super) port: String,
    pub(super) process: String,
}

/// The error counter adds the kind to the listener's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ErrorLabels {
    listener: String,
    port: String,
    process: String,
    kind: String,
}

impl ErrorLabels {
    pub(super) fn new(labels: &ListenerLabels, kind: ErrorKind) -> Self {
        Self {
            listener: labels.listener.clone(),
            port: labels.port.clone(),
            process: labels.process.clone(),
            kind: kind.name().to_owned(),
        }
    }
}

/// Who runs a listener (`tracker_listener_info`): one series per listener, so that the other
/// series keep their labels and their number, and a query joins it on `listener`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct InfoLabels {
    pub(super) listener: String,
    pub(super) port: String,
    pub(super) process: String,
    /// The systemd unit; empty where none.
    pub(super) unit: String,
    /// The container's id; empty where none.
    pub(super) container: String,
    /// The pod's name, or its uid where the name is unknown; empty where none.
    pub(super) pod: String,
    pub(super) pod_namespace: String,
}

/// Which hook serves a capability (`tracker_hook_info`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct HookLabels {
    pub(super) capability: String,
    pub(super) hook: String,
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
pub(super) struct Metrics {
    pub(super) opened: Family<ListenerLabels, Counter>,
    pub(super) closed: Family<ListenerLabels, Counter>,
    pub(super) errors: Family<ErrorLabels, Counter>,
    pub(super) connection_seconds: Family<ListenerLabels, SecondsCounter>,
    pub(super) busy_seconds: Family<ListenerLabels, SecondsCounter>,
    pub(super) closing_seconds: Family<ListenerLabels, SecondsCounter>,
    pub(super) lost_events: Counter,
    pub(super) untracked_connections: Counter,
    pub(super) listen_overflows: Counter,
    pub(super) listen_drops: Counter,
    pub(super) unattributed_closes: Counter,
    pub(super) corrections: Family<ListenerLabels, Counter>,
    pub(super) sessions_untracked: Family<ListenerLabels, Counter>,
    pub(super) accept_queue: Family<ListenerLabels, Gauge>,
    pub(super) accept_queue_peak: Family<ListenerLabels, Gauge>,
    pub(super) accept_backlog: Family<ListenerLabels, Gauge>,
    pub(super) connections: Family<ListenerLabels, Gauge>,
    pub(super) connections_peak: Family<ListenerLabels, Gauge>,
    pub(super) closing_connections: Family<ListenerLabels, Gauge>,
    pub(super) busy_connections: Family<ListenerLabels, Gauge>,
    pub(super) sessions_peak: Family<ListenerLabels, Gauge>,
    pub(super) sessions_unknown: Family<ListenerLabels, Gauge>,
    pub(super) listener_up: Family<ListenerLabels, Gauge>,
    pub(super) lifetime: HistogramFamily,
    pub(super) peak_sessions: HistogramFamily,
    pub(super) hook_info: Family<HookLabels, Gauge>,
    pub(super) listener_info: Family<InfoLabels, Gauge>,
    pub(super) accepted: Family<ListenerLabels, Counter>,
    pub(super) upgraded: Family<ListenerLabels, Counter>,
    pub(super) sessions: Family<ListenerLabels, Counter>,
    pub(super) server_closed: Family<ListenerLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `tracker_` prefix.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            opened: Family::default(),
            closed: Family::default(),
            errors: Family::default(),
            connection_seconds: Family::default(),
            busy_seconds: Family::default(),
            closing_seconds: Family::default(),
            lost_events: Counter::default(),
            untracked_connections: Counter::default(),
            listen_overflows: Counter::default(),
            listen_drops: Counter::default(),
            unattributed_closes: Counter::default(),
            corrections: Family::default(),
            sessions_untracked: Family::default(),
            accept_queue: Family::default(),
            accept_queue_peak: Family::default(),
            accept_backlog: Family::default(),
            connections: Family::default(),
            connections_peak: Family::default(),
            closing_connections: Family::default(),
            busy_connections: Family::default(),
            sessions_peak: Family::default(),
            sessions_unknown: Family::default(),
            listener_up: Family::default(),
            lifetime: Family::new_with_constructor(lifetime_histogram),
            peak_sessions: Family::new_with_constructor(sessions_histogram),
            hook_info: Family::default(),
            listener_info: Family::default(),
            accepted: Family::default(),
            upgraded: Family::default(),
            sessions: Family::default(),
            server_closed: Family::default(),
        };
        metrics.register_counters(registry);
        metrics.register_gauges_and_histograms(registry);
        metrics
    }

    fn register_counters(&self, registry: &mut Registry) {
        // Counter names get their `_total` suffix, and units their `_seconds`, from the
        // encoder; the names here are the stems.
        registry.register(
            "connections_opened",
            "Connections whose life started: accepted by the server, or established where the \
             kernel has no accept hook",
            self.opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections whose life ended: closed by the server, or reset",
            self.closed.clone(),
        );
        registry.register(
            "errors",
            "Inconsistent event sequences seen by the connection model, by kind",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "connection",
            "Connection-seconds: the sum of the time the servers held their connections",
            Unit::Seconds,
            self.connection_seconds.clone(),
        );
        registry.register_with_unit(
            "busy",
            "Busy-seconds: the sum of the time connections were serving a request",
            Unit::Seconds,
            self.busy_seconds.clone(),
        );
        registry.register_with_unit(
            "closing",
            "Closing-seconds: the time after the server's close while the kernel finished \
             the connection (not part of connection-seconds)",
            Unit::Seconds,
            self.closing_seconds.clone(),
        );
        self.register_loss_counters(registry);
        self.register_capability_counters(registry);
    }

    /// What the daemon or the kernel could not count, and what it corrected.
    fn register_loss_counters(&self, registry: &mut Registry) {
        registry.register(
            "lost_events",
            "Kernel events dropped because the ring buffer was full",
            self.lost_events.clone(),
        );
        registry.register(
            "untracked_connections",
            "Connections the kernel could not track because its table was full",
            self.untracked_connections.clone(),
        );
        registry.register(
            "listen_overflows",
            "Connections refused because an accept queue was full (network namespace)",
            self.listen_overflows.clone(),
        );
        registry.register(
            "listen_drops",
            "Connections dropped at a listener, overflows included (network namespace)",
            self.listen_drops.clone(),
        );
        registry.register(
            "unattributed_closes",
            "Connection closes no tracker could be found for",
            self.unattributed_closes.clone(),
        );
        registry.register(
            "corrections",
            "Connections the model added or closed to match the kernel's table",
            self.corrections.clone(),
        );
        registry.register(
            "sessions_untracked",
            "Sessions not counted: HTTP/2 streams beyond the limit open on one connection",
            self.sessions_untracked.clone(),
        );
    }

    /// Counters of the capabilities a kernel may lack (absent without their hook).
    fn register_capability_counters(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Connections the server accepted (absent where the kernel has no accept hook)",
            self.accepted.clone(),
        );
        registry.register(
            "sessions",
            "Sessions started: HTTP/1 requests, HTTP/2 streams (absent without a turns hook)",
            self.sessions.clone(),
        );
        registry.register(
            "connections_upgraded",
            "Connections upgraded by a 101 Switching Protocols (WebSocket, h2c; absent \
             without a turns hook)",
            self.upgraded.clone(),
        );
        registry.register(
            "connections_server_closed",
            "Connections the server closed itself (absent where the kernel has no close hook)",
            self.server_closed.clone(),
        );
    }

    fn register_gauges_and_histograms(&self, registry: &mut Registry) {
        registry.register(
            "accept_queue",
            "Connections waiting in the accept queue at the last sample",
            self.accept_queue.clone(),
        );
        registry.register(
            "accept_queue_peak",
            "Longest accept queue sampled in the last report's interval",
            self.accept_queue_peak.clone(),
        );
        registry.register(
            "accept_backlog",
            "The accept queue's limit (listen backlog)",
            self.accept_backlog.clone(),
        );
        registry.register(
            "connections",
            "Connections the server held at the last report",
            self.connections.clone(),
        );
        registry.register(
            "connections_peak",
            "Most connections open at once in the last report's interval",
            self.connections_peak.clone(),
        );
        registry.register(
            "closing_connections",
            "Connections the server has closed and the kernel is still finishing, at the last \
             report (not part of tracker_connections)",
            self.closing_connections.clone(),
        );
        registry.register(
            "busy_connections",
            "Connections serving a request at the last report",
            self.busy_connections.clone(),
        );
        registry.register(
            "sessions_peak",
            "Most concurrent sessions on one connection in the last report's interval",
            self.sessions_peak.clone(),
        );
        registry.register(
            "sessions_unknown_connections",
            "Connections of the last report whose sessions could not be counted",
            self.sessions_unknown.clone(),
        );
        registry.register(
            "listener_up",
            "1 while the socket is listening, 0 once it has closed",
            self.listener_up.clone(),
        );
        registry.register_with_unit(
            "connection_lifetime",
            "How long closed connections lived",
            Unit::Seconds,
            self.lifetime.clone(),
        );
        registry.register(
            "connection_peak_sessions",
            "Most concurrent sessions over the life of each closed connection",
            self.peak_sessions.clone(),
        );
        registry.register(
            "hook_info",
            "1 for the kernel hook serving each capability; a capability without one has no \
             series, and neither have its figures",
            self.hook_info.clone(),
        );
        registry.register(
            "listener_info",
            "1 for each listener, labelled with the systemd unit, container and Kubernetes pod \
             its cgroup names (empty where none)",
            self.listener_info.clone(),
        );
    }

    /// Drops the gauges of a label set that no longer describes its listener. Counters and
    /// histograms stay: a series that went up must not disappear, or `increase()` would be off.
    pub(super) fn forget_gauges(&self, labels: &ListenerLabels) {
        for gauge in [
            &self.connections,
            &self.connections_peak,
            &self.closing_connections,
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
