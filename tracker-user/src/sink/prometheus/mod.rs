//! A Prometheus endpoint: [`PrometheusSink`] turns every report into metrics and serves them
//! on `GET /metrics`, in the classic text format (0.0.4) unless the scraper's `Accept` header
//! asks for OpenMetrics, as the official client libraries do.
//!
//! Reports carry what happened in their interval, so their figures are added to the counters
//! as they are: the counters only ever go up, which is what Prometheus's `rate()` and
//! `increase()` expect, whatever `--no-reset` says.
//!
//! Series are labelled by tracker, never by remote address: the number of series stays bounded
//! by the number of listening sockets, however many clients connect.

mod exposition;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use super::{Flow, ReportBatch, ReportSink};
use crate::kernel::hooks::{Capability, HookChoice};
use crate::model::Nanos;
use crate::observer::ListenerReport;
use crate::tracker_id::{Role, TrackerId};
use metrics::{ErrorLabels, HookLabels, InfoLabels, ListenerLabels, Metrics};

/// The content type of the classic text format, served by default.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text, served to scrapers that accept it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn seconds(ns: Nanos) -> f64 {
    // Lossy only beyond 2^53 ns (about 104 days in one report), and then by nanoseconds.
    ns as f64 / 1e9
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The metrics and the labels each tracker's series were last given, behind one lock so that
/// a scrape never sees half a report.
struct Inner {
    registry: Registry,
    metrics: Metrics,
    /// The labels of each tracker's series (the owning process can change).
    labels: HashMap<TrackerId, ListenerLabels>,
    /// The labels of each listener's info series.
    info_labels: HashMap<TrackerId, InfoLabels>,
}

impl Inner {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tracker");
        let metrics = Metrics::register(&mut registry);
        Self {
            registry,
            metrics,
            labels: HashMap::new(),
            info_labels: HashMap::new(),
        }
    }

    fn apply(&mut self, batch: &ReportBatch<'_>) {
        let totals = &batch.totals;
        let metrics = &self.metrics;
        metrics.lost_events.inc_by(totals.lost_events);
        metrics
            .untracked_connections
            .inc_by(totals.untracked_connections);
        metrics.listen_overflows.inc_by(totals.listen_overflows);
        metrics.listen_drops.inc_by(totals.listen_drops);
        metrics
            .unattributed_closes
            .inc_by(totals.unattributed_closes);
        for (capability, hook) in totals.hooks.iter() {
            if let Some(hook) = hook {
                metrics
                    .hook_info
                    .get_or_create(&HookLabels {
                        capability: capability.name().to_owned(),
                        hook: hook.to_owned(),
                    })
                    .set(1);
            }
        }
        for report in batch.reports {
            self.apply_tracker(report, &totals.hooks);
        }
    }

    /// The labels of `report`'s series; when they changed (the owner became known), the
    /// gauges move to the new ones, or two series would claim the tracker's current state.
    fn labels_of(&mut self, report: &ListenerReport) -> ListenerLabels {
        let labels = ListenerLabels {
            listener: report.name(),
            port: report.id.port().to_string(),
            process: report
                .owners
                .first()
                .map(|owner| owner.comm.clone())
                .unwrap_or_default(),
        };
        if let Some(previous) = self.labels.insert(report.id, labels.clone())
            && previous != labels
        {
            self.metrics.forget_gauges(&previous);
        }
        labels
    }

    /// Sets the listener's info series, moving it when its labels changed (one series per
    /// listener, never two).
    fn set_info(&mut self, report: &ListenerReport, labels: &ListenerLabels) {
        if report.id.role != Role::Listen {
            return;
        }
        let workload = &report.workload;
        let pod = workload.pod.as_ref();
        let info = InfoLabels {
            listener: labels.listener.clone(),
            port: labels.port.clone(),
            process: labels.process.clone(),
            unit: workload.unit.clone().unwrap_or_default(),
            container: workload
                .container
                .as_ref()
                .map(|container| container.id.clone())
                .unwrap_or_default(),
            pod: pod
                .map(|pod| pod.name.clone().unwrap_or_else(|| pod.uid.clone()))
                .unwrap_or_default(),
            pod_namespace: pod
                .and_then(|pod| pod.namespace.clone())
                .unwrap_or_default(),
        };
        self.metrics.listener_info.get_or_create(&info).set(1);
        if let Some(previous) = self.info_labels.insert(report.id, info.clone())
            && previous != info
        {
            self.metrics.listener_info.remove(&previous);
        }
    }

    fn apply_tracker(&mut self, report: &ListenerReport, hooks: &HookChoice) {
        let labels = self.labels_of(report);
        self.set_info(report, &labels);
        let metrics = &self.metrics;
        let snapshot = &report.snapshot;
        let add =
            |family: &Family<ListenerLabels, prometheus_client::metrics::counter::Counter>,
             value: u64| {
                family.get_or_create(&labels).inc_by(value);
            };
        add(&metrics.opened, snapshot.opened);
        add(&metrics.closed, snapshot.closed);
        add(&metrics.corrections, report.corrections);
        for (kind, count) in snapshot.errors.iter() {
            // Created even at zero, so that every kind is visible from the first scrape.
            metrics
                .errors
                .get_or_create(&ErrorLabels::new(&labels, kind))
                .inc_by(count);
        }
        metrics
            .connection_seconds
            .get_or_create(&labels)
            .inc_by(seconds(snapshot.conn_for_ns));
        metrics
            .closing_seconds
            .get_or_create(&labels)
            .inc_by(seconds(report.closing_ns));
        // The figures of a capability no hook serves have no series at all (not zeroes).
        let turns = hooks.has(Capability::Turns);
        if turns {
            metrics
                .busy_seconds
                .get_or_create(&labels)
                .inc_by(seconds(snapshot.active_for_ns));
        }
        if turns {
            add(&metrics.upgraded, report.upgraded);
            add(&metrics.sessions, snapshot.sessions);
            add(&metrics.sessions_untracked, report.sessions_untracked);
        }
        if hooks.has(Capability::Accept) {
            add(&metrics.accepted, report.accepted);
        }
        if hooks.has(Capability::Close) {
            add(&metrics.server_closed, report.server_closed);
        }

        let set = |family: &Family<ListenerLabels, Gauge>, value: i64| {
            family.get_or_create(&labels).set(value);
        };
        set(&metrics.connections, gauge_value(snapshot.curr));
        set(&metrics.connections_peak, gauge_value(snapshot.peak));
        set(
            &metrics.closing_connections,
            i64::try_from(report.closing).unwrap_or(i64::MAX),
        );
        if turns {
            set(&metrics.busy_connections, gauge_value(snapshot.busy));
            set(&metrics.sessions_peak, gauge_value(snapshot.peak_sessions));
        }
        if turns {
            set(
                &metrics.sessions_unknown,
                i64::try_from(report.sessions_unknown()).unwrap_or(i64::MAX),
            );
        }
        set(&metrics.listener_up, i64::from(!report.gone));
        if let Some(queue) = report.accept_queue {
            set(&metrics.accept_queue, i64::from(queue));
        }
        if let Some(peak) = report.accept_queue_peak {
            set(&metrics.accept_queue_peak, i64::from(peak));
        }
        if let Some(backlog) = report.accept_backlog {
            set(&metrics.accept_backlog, i64::from(backlog));
        }

        let lifetime = metrics.lifetime.get_or_create(&labels);
        for closed in &report.closed_connections {
            lifetime.observe(seconds(closed.lifetime_ns));
        }
        if turns {
            let peak_sessions = metrics.peak_sessions.get_or_create(&labels);
            for closed in &report.closed_connections {
                peak_sessions.observe(f64::from(closed.peak_sessions));
            }
        }
    }

    /// OpenMetrics text, as the client library writes it.
    fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The classic text format (0.0.4).
    fn encode_classic(&self) -> Result<String, std::fmt::Error> {
        Ok(exposition::classic_from_openmetrics(
            &self.encode_openmetrics()?,
        ))
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
    /// `GET /metrics` answers the metrics (see the module documentation for the format); any
    /// other path is a 404.
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

/// Whether the scraper's `Accept` header lists OpenMetrics text.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            media.split(';').next().is_some_and(|kind| {
                kind.trim()
                    .eq_ignore_ascii_case("application/openmetrics-text")
            })
        })
}

async fn serve_metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let (content_type, encoded) = if wants_openmetrics(&headers) {
        (OPENMETRICS_CONTENT_TYPE, lock(&shared).encode_openmetrics())
    } else {
        (CLASSIC_CONTENT_TYPE, lock(&shared).encode_classic())
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(error) => {
            log::error!("encoding the Prometheus metrics: {error}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}
