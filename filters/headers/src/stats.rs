//! The header stage's counters: request ids generated / kept, traces continued / started,
//! malformed `traceparent` seen.
//!
//! Counting must not cost a host call per request (a metric increment is a call across the
//! VM boundary, thousands of instructions in Envoy), so requests only bump local counts; the
//! glue calls [`Stats::flush`] from a timer, which sends each non-zero count as one
//! `increment_metric`. Metrics are defined once, at configure time ([`Stats::define`]), and
//! only for the features the configuration enables.

use std::cell::Cell;

use filter_core::{Host, HostError, MetricKind};

/// One counter of the header stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A request id was generated (absent, empty, or replaced by policy).
    IdsGenerated,
    /// The client's request id was kept.
    IdsKept,
    /// A valid incoming `traceparent` was continued.
    TracesContinued,
    /// A new trace was started (no or malformed `traceparent`).
    TracesStarted,
    /// An incoming `traceparent` was present but malformed (and a new trace started).
    TraceparentMalformed,
}

impl Counter {
    const ALL: [Counter; 5] = [
        Counter::IdsGenerated,
        Counter::IdsKept,
        Counter::TracesContinued,
        Counter::TracesStarted,
        Counter::TraceparentMalformed,
    ];

    /// The metric name's last part.
    pub fn name(self) -> &'static str {
        match self {
            Counter::IdsGenerated => "request_id.generated",
            Counter::IdsKept => "request_id.kept",
            Counter::TracesContinued => "trace.continued",
            Counter::TracesStarted => "trace.started",
            Counter::TraceparentMalformed => "traceparent.malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn enabled(self, request_id: bool, trace: bool) -> bool {
        match self {
            Counter::IdsGenerated | Counter::IdsKept => request_id,
            Counter::TracesContinued | Counter::TracesStarted | Counter::TraceparentMalformed => {
                trace
            }
        }
    }
}

/// Counts not yet sent to the host, and the metric ids they go to.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    request_id: bool,
    trace: bool,
    ids: [Cell<Option<u32>>; 5],
    pending: [Cell<u64>; 5],
}

impl Stats {
    pub(crate) fn new(request_id: bool, trace: bool) -> Self {
        Self {
            request_id,
            trace,
            ..Self::default()
        }
    }

    /// Defines the counters the configuration uses as `wasmesh.headers.<scope>.<counter>`
    /// (Envoy adds its `wasmcustom` prefix). Call once, at configure time. Returns whether any
    /// counter was defined (none when neither request ids nor trace context are configured:
    /// then there is nothing to flush).
    pub fn define<H: Host>(&self, host: &mut H, scope: &str) -> Result<bool, HostError> {
        let mut any = false;
        for c in Counter::ALL {
            if c.enabled(self.request_id, self.trace) {
                let name = format!("wasmesh.headers.{scope}.{}", c.name());
                let id = host.define_metric(MetricKind::Counter, &name)?;
                if let Some(slot) = self.ids.get(c.index()) {
                    slot.set(Some(id));
                    any = true;
                }
            }
        }
        Ok(any)
    }

    /// Counts one event (no host call).
    pub(crate) fn count(&self, c: Counter) {
        if let Some(p) = self.pending.get(c.index()) {
            p.set(p.get().saturating_add(1));
        }
    }

    /// The count of `c` not yet flushed.
    pub fn pending(&self, c: Counter) -> u64 {
        self.pending.get(c.index()).map_or(0, Cell::get)
    }

    /// Sends every non-zero count of a defined counter to the host (one call each) and resets
    /// it. A count whose increment fails stays pending for the next flush.
    pub fn flush<H: Host>(&self, host: &mut H) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let (Some(id), n) = (id.get(), pending.get()) else {
                continue;
            };
            if n == 0 {
                continue;
            }
            let delta = i64::try_from(n).unwrap_or(i64::MAX);
            if host.increment_metric(id, delta).is_ok() {
                pending.set(n.saturating_sub(delta.unsigned_abs()));
            }
        }
    }
}
