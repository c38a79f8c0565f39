//! Running N workers over a bounded amount of work, and the figures taken
//! around it: wall time, latency percentiles, and the CPU time the server
//! and the client each spent (they share the machine's cores).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::http::BoxError;
use crate::servers::{own_cpu_seconds, proc_stats};

/// Hands out work item numbers until `count` are taken or the time is up:
/// every loop of the benchmark is bounded both ways.
pub struct Ticket {
    next: AtomicUsize,
    count: usize,
    deadline: Instant,
    time_capped: AtomicBool,
}

impl Ticket {
    pub fn new(count: usize, duration: Duration) -> Arc<Ticket> {
        Arc::new(Ticket {
            next: AtomicUsize::new(0),
            count,
            deadline: Instant::now() + duration,
            time_capped: AtomicBool::new(false),
        })
    }

    pub fn take(&self) -> Option<usize> {
        if Instant::now() >= self.deadline {
            self.time_capped.store(true, Ordering::Relaxed);
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.count).then_some(i)
    }

    /// True when the time bound, not the count, ended the work.
    pub fn time_capped(&self) -> bool {
        self.time_capped.load(Ordering::Relaxed)
    }
}

/// Runs `concurrency` workers made by `make(worker_number)` and collects
/// their results; the first error stops the others and is returned.
pub async fn run_workers<T, F, Fut>(concurrency: usize, make: F) -> Result<Vec<T>, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    for w in 0..concurrency {
        set.spawn(make(w));
    }
    let mut results = Vec::with_capacity(concurrency);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(t)) => results.push(t),
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(format!("a worker failed: {e}").into());
            }
        }
    }
    Ok(results)
}

/// Latencies in microseconds.
#[derive(Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn record(&mut self, since: Instant) {
        self.0
            .push(since.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn merge(all: impl IntoIterator<Item = Latencies>) -> Latencies {
        let mut v: Vec<u32> = all.into_iter().flat_map(|l| l.0).collect();
        v.sort_unstable();
        Latencies(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p` quantile in milliseconds (`p` in 0..=1); needs `merge` first.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((p * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        f64::from(self.0[rank - 1]) / 1000.0
    }
}

/// Wall time and CPU time around one measured phase.
pub struct Window {
    start: Instant,
    server_pid: u32,
    server_cpu0: f64,
    client_cpu0: f64,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spent {
    pub seconds: f64,
    pub server_cpu_seconds: f64,
    pub client_cpu_seconds: f64,
}

impl Window {
    pub fn open(server_pid: u32) -> Window {
        Window {
            server_pid,
            server_cpu0: proc_stats(server_pid).map_or(0.0, |s| s.cpu_seconds),
            client_cpu0: own_cpu_seconds(),
            start: Instant::now(),
        }
    }

    pub fn close(self) -> Spent {
        let seconds = self.start.elapsed().as_secs_f64();
        Spent {
            seconds,
            server_cpu_seconds: proc_stats(self.server_pid).map_or(0.0, |s| s.cpu_seconds)
                - self.server_cpu0,
            client_cpu_seconds: own_cpu_seconds() - self.client_cpu0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let l = Latencies::merge([Latencies((1..=100).map(|x| x * 1000).collect())]);
        assert_eq!(l.quantile_ms(0.5), 50.0);
        assert_eq!(l.quantile_ms(0.99), 99.0);
        assert_eq!(l.quantile_ms(1.0), 100.0);
    }

    #[test]
    fn tickets_stop_at_the_count() {
        let t = Ticket::new(2, Duration::from_secs(10));
        assert_eq!((t.take(), t.take(), t.take()), (Some(0), Some(1), None));
        assert!(!t.time_capped());
        let t = Ticket::new(2, Duration::ZERO);
        assert_eq!(t.take(), None);
        assert!(t.time_capped());
    }
}
