//! What to keep: the tail-sampling policy, as pure functions of a trace.
//!
//! A whole trace is kept when any of these holds, in this order of reasons:
//!
//! 1. **sentinel**: it holds a failure span of the sentinel (an event that
//!    a consumer missed);
//! 2. **error**: any span's status is ERROR;
//! 3. **slow**: it lasted longer than the threshold (its root span, or from
//!    its first start to its last end when the root is missing);
//! 4. **ratio**: its trace id falls in the sampled share, decided from the
//!    id's random bits like OpenTelemetry's `TraceIdRatioBased`, so that
//!    every keeper instance, and a restarted one, decides alike.
//!
//! Everything else is dropped.

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{Span, status};

/// The attribute every sentinel failure span carries.
pub const SENTINEL_ATTRIBUTE: &str = "tracehop.consumer.state";

/// The keeper's thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Keep every trace slower than this.
    pub slower_than: Duration,
    /// Keep this share (0 to 1) of the other traces.
    pub ratio: f64,
}

/// Why a trace was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Sentinel,
    Error,
    Slow,
    Ratio,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Sentinel => "sentinel",
            Reason::Error => "error",
            Reason::Slow => "slow",
            Reason::Ratio => "ratio",
        }
    }

    /// Reasons that come from a span's content: a late span with one of
    /// these changes a dropped trace's fate.
    pub fn is_failure(self) -> bool {
        matches!(self, Reason::Sentinel | Reason::Error)
    }
}

/// True when `trace_id` (16 bytes) is in the sampled share `ratio`: its
/// last eight bytes, read as a number, are below `ratio` of their range.
pub fn sampled_by_ratio(trace_id: &[u8], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || trace_id.len() < 8 {
        return false;
    }
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&trace_id[trace_id.len() - 8..]);
    let value = u64::from_be_bytes(tail) >> 1;
    value < (ratio * (1u64 << 63) as f64) as u64
}

/// What the keeper knows of a trace so far.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub spans: usize,
    pub error: bool,
    pub sentinel: bool,
    first_start: u64,
    last_end: u64,
    root_duration: Option<u64>,
    span_ids: HashSet<Vec<u8>>,
    parent_ids: HashSet<Vec<u8>>,
}

impl Summary {
    /// Takes one more span into account.
    pub fn add(&mut self, span: &Span) {
        self.spans += 1;
        if span.status.as_ref().is_some_and(|s| s.code == status::StatusCode::Error as i32) {
            self.error = true;
        }
        if span.attributes.iter().any(|a| a.key == SENTINEL_ATTRIBUTE) {
            self.sentinel = true;
        }
        if self.first_start == 0 || span.start_time_unix_nano < self.first_start {
            self.first_start = span.start_time_unix_nano;
        }
        self.last_end = self.last_end.max(span.end_time_unix_nano);
        if span.parent_span_id.is_empty() {
            self.root_duration = Some(span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano));
        } else {
            self.parent_ids.insert(span.parent_span_id.clone());
        }
        self.span_ids.insert(span.span_id.clone());
    }

    /// Whether the trace looks whole: its root has arrived and every span's
    /// parent too. A trace can still grow after that (an event consumed
    /// later); the quiet period covers that.
    pub fn closed(&self) -> bool {
        self.root_duration.is_some() && self.parent_ids.iter().all(|parent| self.span_ids.contains(parent))
    }

    /// How long the trace took: its root span, or the whole extent without one.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.root_duration.unwrap_or(self.last_end.saturating_sub(self.first_start)))
    }

    /// Why the trace is kept, or `None` to drop it.
    pub fn decide(&self, trace_id: &[u8], policy: &Policy) -> Option<Reason> {
        if self.sentinel {
            Some(Reason::Sentinel)
        } else if self.error {
            Some(Reason::Error)
        } else if self.duration() > policy.slower_than {
            Some(Reason::Slow)
        } else if sampled_by_ratio(trace_id, policy.ratio) {
            Some(Reason::Ratio)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::Status;

    use super::*;

    const POLICY: Policy = Policy { slower_than: Duration::from_secs(1), ratio: 0.1 };

    fn span(id: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            start_time_unix_nano: start_ms * 1_000_000,
            end_time_unix_nano: end_ms * 1_000_000,
            ..Default::default()
        }
    }

    fn summary(spans: &[Span]) -> Summary {
        let mut summary = Summary::default();
        for span in spans {
            summary.add(span);
        }
        summary
    }

    /// A trace id that the ratio does not sample.
    fn unsampled() -> Vec<u8> {
        (0u8..=255).map(|b| vec![b; 16]).find(|id| !sampled_by_ratio(id, POLICY.ratio)).unwrap()
    }

    #[test]
    fn a_fast_clean_trace_outside_the_ratio_is_dropped() {
        let trace = summary(&[span(1, None, 0, 50), span(2, Some(1), 5, 40)]);
        assert!(trace.closed());
        assert_eq!(trace.decide(&unsampled(), &POLICY), None);
    }

    #[test]
    fn errors_sentinel_spans_and_slow_traces_are_always_kept() {
        let mut failed = span(2, Some(1), 5, 40);
        failed.status = Some(Status { code: status::StatusCode::Error as i32, ..Default::default() });
        assert_eq!(summary(&[span(1, None, 0, 50), failed.clone()]).decide(&unsampled(), &POLICY), Some(Reason::Error));

        let mut missed = failed;
        missed.attributes.push(KeyValue { key: SENTINEL_ATTRIBUTE.to_string(), ..Default::default() });
        assert_eq!(summary(&[span(1, None, 0, 50), missed]).decide(&unsampled(), &POLICY), Some(Reason::Sentinel));

        let slow = summary(&[span(1, None, 0, 1500)]);
        assert_eq!(slow.decide(&unsampled(), &POLICY), Some(Reason::Slow));
    }

    #[test]
    fn a_trace_without_its_root_or_a_parent_is_not_closed() {
        assert!(!summary(&[span(2, Some(1), 0, 10)]).closed());
        assert!(!summary(&[span(1, None, 0, 10), span(3, Some(2), 1, 5)]).closed());
        // Its duration is then its extent.
        assert_eq!(summary(&[span(2, Some(1), 100, 2300)]).duration(), Duration::from_millis(2200));
    }

    #[test]
    fn the_ratio_samples_about_its_share_and_is_deterministic() {
        let ids: Vec<Vec<u8>> = (0..20_000u32)
            .map(|n| {
                let mut id = [0u8; 16];
                id[8..12].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
                id[12..].copy_from_slice(&n.wrapping_mul(40_503).to_be_bytes());
                id.to_vec()
            })
            .collect();
        let kept = ids.iter().filter(|id| sampled_by_ratio(id, 0.1)).count();
        assert!((1_700..2_300).contains(&kept), "{kept} of 20000 at 10%");
        assert!(ids.iter().all(|id| sampled_by_ratio(id, 0.1) == sampled_by_ratio(id, 0.1)));
        assert!(ids.iter().all(|id| sampled_by_ratio(id, 1.0)));
        assert!(!ids.iter().any(|id| sampled_by_ratio(id, 0.0)));
    }
}
