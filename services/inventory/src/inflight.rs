//! [`InFlight`]: one reservation per order at a time in this process. A
//! caller that gave up waiting asks again (order retries a reserve that
//! timed out); while the first attempt is still running, the repeat waits
//! for its answer here, holding no database connection, instead of queueing
//! on the order's row lock in PostgreSQL with a connection each. Without it,
//! a slow reservation and its retries would take three connections, and a
//! few of them would exhaust the pool and slow every checkout. A joining
//! call's span links to the running one's: the trace then shows what it
//! waited for.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TraceContextExt as _;
use tokio::sync::watch;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Work in flight, by key; each finished answer is handed to every caller
/// that asked for the same key meanwhile.
#[derive(Debug)]
pub struct InFlight<K, V> {
    running: Arc<Mutex<HashMap<K, Running<V>>>>,
}

/// A run in flight: its answer to come, and the span it runs in, which a
/// joining caller links to (it waits for that span's work, not a child of
/// its own: the link is what shows where its time goes).
#[derive(Debug)]
struct Running<V> {
    answer: watch::Receiver<Option<V>>,
    span: opentelemetry::trace::SpanContext,
}

impl<K, V> Clone for InFlight<K, V> {
    fn clone(&self) -> Self {
        Self { running: self.running.clone() }
    }
}

impl<K, V> Default for InFlight<K, V> {
    fn default() -> Self {
        Self { running: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// Removes the key when the leader finishes, also if it panics or is
/// dropped: a follower then sees the channel close and runs on its own.
struct Leader<K: Hash + Eq, V> {
    key: K,
    running: Arc<Mutex<HashMap<K, Running<V>>>>,
}

impl<K: Hash + Eq, V> Drop for Leader<K, V> {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl<K: Hash + Eq + Clone, V: Clone> InFlight<K, V> {
    /// Runs `work` for `key`, or, when it is already running, waits for
    /// that run's answer; true as the second value when it joined one.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let joined = {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.get(&key).map(|run| (run.answer.clone(), run.span.clone()))
        };
        // When the first run ends without an answer, run it ourselves.
        if let Some((mut answer, leader)) = joined {
            tracing::Span::current().add_link(leader);
            if let Ok(value) = answer.wait_for(Option::is_some).await
                && let Some(value) = value.clone()
            {
                return (value, true);
            }
        }
        let (sender, receiver) = watch::channel(None);
        let span = tracing::Span::current().context().span().span_context().clone();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), Running { answer: receiver, span });
        let leader = Leader { key, running: self.running.clone() };
        let value = work().await;
        let _ = sender.send(Some(value.clone()));
        drop(leader);
        (value, false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_repeat_joins_the_run_in_flight() {
        let inflight: InFlight<u32, u32> = InFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (inflight, runs) = (inflight.clone(), runs.clone());
            tokio::spawn(async move {
                inflight
                    .run(7, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        released.await.unwrap();
                        42
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let (inflight, runs) = (inflight.clone(), runs.clone());
            tokio::spawn(
                async move { inflight.run(7, || async move { runs.fetch_add(1, Ordering::SeqCst) as u32 }).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), (42, false));
        assert_eq!(second.await.unwrap(), (42, true));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran once");
        // Finished: the next run is a new one.
        assert_eq!(inflight.run(7, || async { 5 }).await, (5, false));
    }
}
