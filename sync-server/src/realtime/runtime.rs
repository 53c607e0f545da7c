//! Where WebSocket sessions run: a tokio runtime of their own, beside the one that serves HTTP.
//!
//! Why: tokio's scheduler is fair, not prioritised. When an event reaches 10,000 sockets, 10,000
//! writer tasks become ready at once; on a shared runtime every step of a REST request — the
//! publish that caused them among others — waits behind all of them, so a 1 ms request takes
//! the length of a fan-out round, and a publisher that waits for its answer is slowed by its
//! own subscribers. On a runtime of their own the sockets' work is scheduled by the OS beside
//! the HTTP threads, which mostly sleep and are run as soon as a request arrives.
//!
//! Its threads also run at a lower OS priority (Linux's `SCHED_IDLE` by default): the HTTP side
//! carries the durable paths — reconcile, publish, Class D — and realtime is the part allowed to
//! degrade. Under a fan-out burst a request is answered first and the frames go out in the CPU
//! it leaves; when HTTP is idle the sessions have all of it. `SCHED_IDLE` rather than a nice
//! value because of wake-ups: a request thread (or the database's process) that wakes takes the
//! core from an idle-policy thread at once, where a nice +10 thread keeps it until its slice is
//! spent — with 10,000 subscribers that wait, on every round trip of a publish, made publishing
//! 4× slower (docs/benchmarks.md, "Where PostgreSQL's publish time goes").
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

/// How the session threads are scheduled beside the HTTP threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Linux's `SCHED_IDLE`: the CPU that everything else leaves, given up at once to a thread
    /// that wakes (a request, the database).
    Idle,
    /// `n` nice steps below the HTTP threads (0: equals; at most nice 19).
    Nice(i32),
}

/// The session threads' default priority.
pub const DEFAULT_PRIORITY: Priority = Priority::Idle;

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "idle" => Ok(Priority::Idle),
            n => match n.parse::<i32>() {
                Ok(n) if (0..=39).contains(&n) => Ok(Priority::Nice(n)),
                _ => Err(format!("{s:?}: `idle`, or nice steps from 0 to 39")),
            },
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Idle => f.write_str("idle"),
            Priority::Nice(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug)]
pub struct SessionRuntime {
    /// `None`: sessions share the runtime that built this (`threads == 0`).
    own: Option<Runtime>,
    handle: Handle,
}

impl SessionRuntime {
    /// A runtime of `threads` worker threads at `priority` below the caller's; 0 threads shares
    /// the current runtime (and must be called inside one).
    pub fn new(threads: usize, priority: Priority) -> std::io::Result<Self> {
        if threads == 0 {
            return Ok(Self { own: None, handle: Handle::current() });
        }
        let rt = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pf2-sessions")
            .on_thread_start(move || lower_priority(priority))
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

/// This thread's priority, lowered to `priority`. Refusals are logged, not fatal: sessions
/// then compete with HTTP as equals.
#[cfg(target_os = "linux")]
fn lower_priority(priority: Priority) {
    use rustix::process::{getpriority_process, setpriority_process};
    match priority {
        Priority::Idle => {
            use thread_priority::{
                NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
                set_thread_priority_and_policy, thread_native_id,
            };
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            let set = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
            if let Err(e) = set {
                tracing::warn!(error = ?e, "could not give the session threads SCHED_IDLE");
            }
        }
        Priority::Nice(by) if by > 0 => {
            // On Linux a thread id names one thread here, not the whole process.
            let me = Some(rustix::thread::gettid());
            let now = getpriority_process(me).unwrap_or(0);
            if let Err(e) = setpriority_process(me, (now + by).min(19)) {
                tracing::warn!(error = %e, "could not lower the session threads' priority");
            }
        }
        Priority::Nice(_) => {}
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_priority: Priority) {}

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
        let rt = std::sync::Arc::new(SessionRuntime::new(2, DEFAULT_PRIORITY).unwrap());
        let name = rt.spawn(async { std::thread::current().name().map(str::to_string) });
        assert_eq!(name.await.unwrap().as_deref(), Some("pf2-sessions"));
        #[cfg(target_os = "linux")]
        {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
            let policy = || thread_priority::thread_schedule_policy().unwrap();
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            assert_ne!(policy(), idle, "HTTP's threads keep the normal policy");
            let there = rt.spawn(async move { policy() }).await.unwrap();
            assert_eq!(there, idle, "sessions run below HTTP: SCHED_IDLE");
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_nice_priority_is_that_many_steps_below() {
        let rt = SessionRuntime::new(1, Priority::Nice(10)).unwrap();
        let here = nice_of_this_thread();
        let there = rt.spawn(async { nice_of_this_thread() }).await.unwrap();
        assert_eq!(there, (here + 10).min(19));
    }

    #[test]
    fn priorities_parse_from_the_flag() {
        assert_eq!("idle".parse(), Ok(Priority::Idle));
        assert_eq!("10".parse(), Ok(Priority::Nice(10)));
        assert_eq!("0".parse(), Ok(Priority::Nice(0)));
        assert!("-1".parse::<Priority>().is_err());
        assert!("fast".parse::<Priority>().is_err());
        assert_eq!(Priority::Idle.to_string(), "idle");
    }

    #[tokio::test]
    async fn zero_threads_share_the_current_runtime() {
        let rt = SessionRuntime::new(0, DEFAULT_PRIORITY).unwrap();
        let here = Handle::current().id();
        assert_eq!(rt.spawn(async { Handle::current().id() }).await.unwrap(), here);
    }
}
