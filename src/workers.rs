//! Serving workers: nginx's worker model, with threads.
//!
//! The client listener's connections are served by a fixed set of threads, each running its own
//! single-threaded tokio runtime. The acceptor hands every accepted connection to the next worker
//! (round robin); from then on the connection, the tasks hyper spawns for it and the upstream
//! connections it opens all live on that one thread. A request therefore never wakes another
//! thread: on a work-stealing runtime every hand-off between the downstream connection task and
//! the upstream connection task could wake a parked worker (a futex call each way), which cost
//! about a third of the small-request throughput (BENCHMARKS.md).
//!
//! Everything else (admin listener, reloads, key polling, the audit writer) stays where it was.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// 1-based index of the serving worker this thread is; 0 on every other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The serving worker the calling thread is (1..=N), or 0 outside the workers.
///
/// The forwarder keeps one upstream connection pool per worker and picks it with this, so an
/// upstream connection is only ever used by the thread that drives it.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many serving workers a configuration asks for: `server.worker_threads`, or one per CPU.
pub fn count(configured: Option<usize>) -> usize {
    configured
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// A running set of serving workers.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start `count` worker threads, each with a single-threaded runtime (I/O and timers enabled).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 1..=count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("tl-gateway-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|cell| cell.set(index));
                    // The runtime only makes progress while this thread blocks on it; tasks still
                    // alive when it is dropped (idle keep-alive connections past the drain,
                    // pooled upstream connections) are cancelled.
                    runtime.block_on(async move {
                        tokio::select! {
                            _ = stopped => {}
                            () = heartbeat() => {}
                        }
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are no workers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run `task` on the next worker, round robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[index].spawn(task));
    }

    /// Stop every worker (cancelling what still runs on it) and wait for the threads to end.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Keep a timer due within a second on every worker.
///
/// tokio's timer wakes its own thread (an eventfd write and an extra trip through `epoll_wait`)
/// whenever a newly armed timer is due before the one the event loop last planned to wake for.
/// Every request arms hyper's header-read timeout for the next request on its connection; with no
/// nearer timer, each of those is the earliest and costs that self-wake — about a tenth of a
/// small request's CPU time (BENCHMARKS.md). With this tick pending, per-request timers (seconds
/// away) are never the earliest.
async fn heartbeat() {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_workers_in_turn_and_know_their_index() {
        let workers = Workers::start(3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (tx, rx) = oneshot::channel();
            workers.spawn(async move {
                let _ = tx.send((current(), std::thread::current().name().map(String::from)));
            });
            seen.push(rx.await.unwrap());
        }
        let indexes: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [1, 2, 3, 1, 2, 3]);
        assert_eq!(seen[1].1.as_deref(), Some("tl-gateway-worker-2"));
        assert_eq!(current(), 0, "the test's own thread is not a worker");
        workers.stop().await;
    }

    #[tokio::test]
    async fn stopping_cancels_what_still_runs() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        workers.stop().await;
        assert!(
            rx.await.is_err(),
            "the pending task was dropped with its runtime"
        );
    }

    #[test]
    fn count_defaults_to_the_cpus_and_is_never_zero() {
        assert_eq!(count(Some(3)), 3);
        assert_eq!(count(Some(0)), 1);
        assert!(count(None) >= 1);
    }
}
