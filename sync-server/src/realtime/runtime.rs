//! Where WebSocket sessions run: a tokio runtime of their own, beside the one that serves HTTP.
//!
//! Why: tokio's scheduler is fair, not prioritised. When an event reaches 10,000 sockets, 10,000
//! writer tasks become ready at once; on a shared runtime every step of a REST request — the
//! publish that caused them among others — waits behind all of them, so a 1 ms request takes
//! the length of a fan-out round, and a publisher that waits for its answer is slowed by its
//! own subscribers. On a runtime of their own the sockets' work is scheduled by the OS beside
//! the HTTP threads, which mostly sleep and are run as soon as a request arrives.
//!
//! Its threads also run at a lower OS priority (`nice` +10 by default): the HTTP side carries
//! the durable paths — reconcile, publish, Class D — and realtime is the part allowed to
//! degrade. Under a fan-out burst a request is answered first and the frames go out in the CPU
//! it leaves; when HTTP is idle the sessions have all of it.
//!
//! A `/v1/ws` socket moves with its session: `socket::upgrade` takes it out of the HTTP runtime's
//! reactor and registers it here, so its readiness events wake this runtime's threads directly
//! (left behind, every frame a client sent woke an HTTP thread first). A Socket.IO connection
//! stays registered with the HTTP runtime (socketioxide owns its upgrade).

use std::future::Future;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

/// Threads of the session runtime by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// How much lower than HTTP's the session threads' priority is by default (`nice` steps).
pub const DEFAULT_NICE: i32 = 10;

#[derive(Debug)]
pub struct SessionRuntime {
    /// `None`: sessions share the runtime that built this (`threads == 0`).
    own: Option<Runtime>,
    handle: Handle,
}

impl SessionRuntime {
    /// A runtime of `threads` worker threads, `nice` steps below the caller's priority; 0
    /// threads shares the current runtime (and must be called inside one).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Self> {
        if threads == 0 {
            return Ok(Self { own: None, handle: Handle::current() });
        }
        let rt = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pf2-sessions")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Self { handle: rt.handle().clone(), own: Some(rt) })
    }

    /// Run `session` (and everything it spawns) on the session runtime.
    pub fn spawn<F>(&self, session: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(session)
    }
}

/// This thread's priority, `by` nice steps lower (at most 19). Refusals are logged, not fatal:
/// sessions then compete with HTTP as equals.
#[cfg(target_os = "linux")]
fn lower_priority(by: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    if by <= 0 {
        return;
    }
    // On Linux a thread id names one thread here, not the whole process.
    let me = Some(rustix::thread::gettid());
    let now = getpriority_process(me).unwrap_or(0);
    if let Err(e) = setpriority_process(me, (now + by).min(19)) {
        tracing::warn!(error = %e, "could not lower the session threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_by: i32) {}

/// A thread's nice value (tests).
#[cfg(all(test, target_os = "linux"))]
fn nice_of_this_thread() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
}

impl Drop for SessionRuntime {
    fn drop(&mut self) {
        let Some(rt) = self.own.take() else { return };
        // The last holder may be one of its own sessions, ending: a runtime cannot wait for
        // itself, so it is told to stop without waiting (its remaining tasks are dropped).
        rt.shutdown_background();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_run_on_their_own_threads_and_the_runtime_can_end_from_inside() {
        let rt = std::sync::Arc::new(SessionRuntime::new(2, DEFAULT_NICE).unwrap());
        let name = rt.spawn(async { std::thread::current().name().map(str::to_string) });
        assert_eq!(name.await.unwrap().as_deref(), Some("pf2-sessions"));
        #[cfg(target_os = "linux")]
        {
            let here = nice_of_this_thread();
            let there = rt.spawn(async { nice_of_this_thread() }).await.unwrap();
            assert_eq!(there, (here + DEFAULT_NICE).min(19), "sessions run below HTTP");
        }
        // Dropped by the last task that holds it, on one of its own threads.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let held = rt.clone();
        drop(rt);
        held.clone().spawn(async move {
            drop(held);
            let _ = tx.send(());
        });
        rx.await.unwrap();
    }

    #[tokio::test]
    async fn zero_threads_share_the_current_runtime() {
        let rt = SessionRuntime::new(0, DEFAULT_NICE).unwrap();
        let here = Handle::current().id();
        assert_eq!(rt.spawn(async { Handle::current().id() }).await.unwrap(), here);
    }
}
