//! The engine's fork-join: every parallel step of a forward pass (GEMM blocks, attention heads,
//! row-wise norms) goes through [`for_each_index`] or [`for_each`].
//!
//! A forward pass is dozens of steps per layer, often only tens or hundreds of microseconds
//! apart. Rayon parks a worker that finds no work after a few microseconds, and waking a parked
//! thread costs tens of microseconds, far more on a virtual machine, where the idle vCPU has
//! halted: measured on a 2-vCPU KVM guest, compute threads serving 250-token batches sat idle
//! 9% of the time against 3.5% for 1,300-token batches. So a forward pass runs as a
//! [`session`]: the other threads of the pool join it as helpers and, between steps, spin
//! (yielding to pending rayon work, e.g. tokenization) instead of parking; each step's tasks are
//! claimed one at a time from a shared counter, so a thread that is interrupted or slower
//! simply claims fewer. Outside a session both functions fall back to rayon.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One parallel step: `n` calls of `f`, claimed by index.
struct Step<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Step<'_> {
    /// Claims and runs indices until none is left; a panic is recorded, not propagated, so the
    /// step's owner can wait for every claimed index before unwinding.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// The threads of one session: the owner publishes steps, helpers spin waiting for them.
struct Team {
    /// The step being run (a `*const Step` with its lifetime erased), or null.
    step: AtomicPtr<()>,
    /// Bumped on every published step.
    epoch: AtomicUsize,
    /// Helpers that may be reading `step` right now.
    readers: AtomicUsize,
    /// False once the session's work is done: helpers return.
    open: AtomicBool,
}

thread_local! {
    /// The team whose session this thread owns, or null.
    static OWNED: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// The team this thread is helping, or null.
    static HELPING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Other sessions that asked this thread for help while it owned one: it joins those still
    /// open when its own closes.
    static DEFERRED: RefCell<Vec<Arc<Team>>> = const { RefCell::new(Vec::new()) };
}

/// Spins before a waiting thread yields its core once (to the OS or to pending rayon work).
const SPINS_PER_YIELD: u32 = 256;

/// One round of a wait: a CPU spin hint, or every [`SPINS_PER_YIELD`]-th round `false`, when the
/// caller should give its core away instead.
fn spin(spins: &mut u32) -> bool {
    *spins += 1;
    if spins.is_multiple_of(SPINS_PER_YIELD) {
        return false;
    }
    std::hint::spin_loop();
    true
}

/// Runs `f` (a forward pass) with the other threads of the current rayon pool joined as
/// helpers for its [`for_each_index`] / [`for_each`] steps. Helpers that are busy elsewhere
/// (another model's batch) join when they are free: a thread that owns another session at the
/// time joins this one when its own ends, so two overlapping passes share the threads again as
/// soon as one of them finishes.
pub fn session<R>(f: impl FnOnce() -> R) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 || rayon::current_thread_index().is_none() || !OWNED.with(Cell::get).is_null() {
        return f();
    }
    let team = Arc::new(Team {
        step: AtomicPtr::new(std::ptr::null_mut()),
        epoch: AtomicUsize::new(0),
        readers: AtomicUsize::new(0),
        open: AtomicBool::new(true),
    });
    // One helper job per thread, in that thread's own queue: the owner cannot take another
    // thread's job while it waits inside rayon (its own returns at once). Not scoped: the
    // owner returns as soon as its pass is done, whether or not a busy thread has run its job.
    let invitation = Arc::clone(&team);
    rayon::spawn_broadcast(move |_| help(&invitation));
    let outer = DEFERRED.with(RefCell::take);
    OWNED.with(|c| c.set(Arc::as_ptr(&team)));
    let result = catch_unwind(AssertUnwindSafe(f));
    OWNED.with(|c| c.set(std::ptr::null()));
    team.open.store(false, Ordering::Release);
    // The sessions this thread had to decline while it owned this one: it joins those still
    // open (a job in its own queue, run when it is back in the pool).
    // The job is a broadcast that only this thread acts on: rayon cannot hand a broadcast
    // job to another thread, while a plain `spawn` could be stolen by the other session's own
    // owner, which declines it, and this thread would never join (seen as a rare test failure).
    let me = rayon::current_thread_index();
    for other in DEFERRED.with(|d| d.replace(outer)) {
        if other.open.load(Ordering::Acquire) {
            rayon::spawn_broadcast(move |ctx| {
                if Some(ctx.index()) == me {
                    help(&other)
                }
            });
        }
    }
    result.unwrap_or_else(|panic| resume_unwind(panic))
}

/// A helper's loop: run the steps the owner publishes until the session closes.
fn help(team: &Arc<Team>) {
    let me = Arc::as_ptr(team);
    let owned = OWNED.with(Cell::get);
    if owned == me || HELPING.with(Cell::get) == me || !team.open.load(Ordering::Acquire) {
        return;
    }
    // A thread that owns a session runs the helper jobs in its queue while inside rayon: those
    // of sessions other threads started meanwhile. It must not spin in them: it would not
    // return to its own session until the other closed, and that other's owner may be spinning
    // in this thread's session in the same way (two passes started together on two idle
    // threads deadlocked so). It declines, and joins when its own session ends.
    if !owned.is_null() {
        DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if !d.iter().any(|t| Arc::ptr_eq(t, team)) {
                d.push(Arc::clone(team));
            }
        });
        return;
    }
    let outer = HELPING.with(|c| c.replace(me));
    let mut seen = 0;
    let mut spins = 0u32;
    while team.open.load(Ordering::Acquire) {
        let epoch = team.epoch.load(Ordering::Acquire);
        if epoch != seen {
            seen = epoch;
            spins = 0;
            team.readers.fetch_add(1, Ordering::SeqCst);
            let step = team.step.load(Ordering::SeqCst) as *const Step;
            // SAFETY: the owner keeps a published step alive until it has unpublished it and
            // seen `readers` at zero (SeqCst on both sides: a reader that registered after the
            // owner's check reads null).
            if let Some(step) = unsafe { step.as_ref() } {
                step.work();
            }
            team.readers.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        // Pending rayon work (tokenization of a new request) runs here rather than wait for
        // the whole batch; with none, give the core to the OS for a moment.
        if !spin(&mut spins) && rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
    HELPING.with(|c| c.set(outer));
}

/// Calls `f(i)` for every `i < n`, in parallel: on the current session's team when there is
/// one, else on the current rayon pool. Returns when every call has returned; a panic in any
/// call is raised again here once all have finished.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if n == 0 {
        return;
    }
    if n == 1 {
        return f(0);
    }
    let team = OWNED.with(Cell::get);
    // SAFETY: `OWNED` is set only while `session` (which owns the team) runs `f` on this thread.
    let Some(team) = (unsafe { team.as_ref() }) else {
        use rayon::prelude::*;
        return (0..n).into_par_iter().for_each(f);
    };
    let step = Step {
        f: &f,
        n,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    team.step.store(&step as *const Step as *mut (), Ordering::SeqCst);
    team.epoch.fetch_add(1, Ordering::SeqCst);
    // While the helpers start on the step, run one pending rayon job, if any: tokenization of
    // a request that just arrived must not wait for the whole batch (both threads are busy
    // with steps nearly all the time, so this is where it gets a thread).
    rayon::yield_now();
    step.work();
    let mut spins = 0u32;
    while step.done.load(Ordering::Acquire) < n {
        if !spin(&mut spins) {
            std::thread::yield_now();
        }
    }
    team.step.store(std::ptr::null_mut(), Ordering::SeqCst);
    while team.readers.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
    if step.panicked.load(Ordering::Relaxed) {
        panic!("a parallel task of the forward pass panicked");
    }
}

/// Calls `f` once on each item, in parallel (see [`for_each_index`]).
pub fn for_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if items.len() <= 1 {
        return items.into_iter().for_each(f);
    }
    // Each slot is taken by the one index that claims it, so its lock is never contended.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    for_each_index(slots.len(), |i| {
        let item = slots[i].lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(item) = item {
            f(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("test pool")
    }

    #[test]
    fn every_index_runs_once_in_and_out_of_a_session() {
        for threads in [1, 2, 4] {
            let pool = pool(threads);
            let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
            pool.install(|| {
                session(|| {
                    for step in 0..50 {
                        for_each_index(step * 20, |i| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
                for_each_index(1000, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            });
            for (i, c) in counts.iter().enumerate() {
                // Index i ran in every session step with i < step*20, plus once outside.
                let steps = (0..50).filter(|s| i < s * 20).count();
                assert_eq!(c.load(Ordering::Relaxed), steps + 1, "index {i}, {threads} threads");
            }
        }
    }

    #[test]
    fn items_are_each_taken_once() {
        let pool = pool(3);
        let mut data = vec![0u32; 777];
        pool.install(|| {
            session(|| {
                for _ in 0..10 {
                    for_each(data.chunks_mut(10).collect(), |chunk| {
                        chunk.iter_mut().for_each(|v| *v += 1)
                    });
                }
            })
        });
        assert!(data.iter().all(|&v| v == 10));
    }

    #[test]
    fn a_panic_in_a_task_reaches_the_caller_after_all_tasks_finish() {
        let pool = pool(2);
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                session(|| {
                    for_each_index(64, |i| {
                        if i == 7 {
                            panic!("task 7");
                        }
                        finished.fetch_add(1, Ordering::Relaxed);
                    })
                })
            })
        }));
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 63);
        // The pool is still usable afterwards.
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            session(|| {
                for_each_index(10, |i| {
                    sum.fetch_add(i, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn sessions_on_two_threads_of_one_pool_do_not_block_each_other() {
        // Two forward passes at once on a 2-thread pool (two models sharing it): each runs,
        // with or without a helper.
        let pool = pool(2);
        let totals: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        pool.install(|| {
            rayon::join(
                || {
                    session(|| {
                        (0..200).for_each(|_| for_each_index(16, |_| _ = totals[0].fetch_add(1, Ordering::Relaxed)))
                    })
                },
                || {
                    session(|| {
                        (0..200).for_each(|_| for_each_index(16, |_| _ = totals[1].fetch_add(1, Ordering::Relaxed)))
                    })
                },
            )
        });
        assert_eq!(totals[0].load(Ordering::Relaxed), 3200);
        assert_eq!(totals[1].load(Ordering::Relaxed), 3200);
    }

    #[test]
    fn a_thread_whose_session_ends_joins_one_still_running() {
        // Two passes overlap on a 2-thread pool, so each owner declines the other's helper
        // job; once the short one ends, its thread must help the long one to the end.
        let pool = pool(2);
        let start = std::sync::Barrier::new(2);
        let short_done = AtomicBool::new(false);
        // Thread indices that ran a task of the long session after the short one ended.
        let late: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        let busy = |micros: u64| {
            let until = std::time::Instant::now() + std::time::Duration::from_micros(micros);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        };
        pool.install(|| {
            rayon::join(
                || {
                    session(|| {
                        start.wait();
                        (0..20).for_each(|_| for_each_index(4, |_| busy(200)));
                    });
                    short_done.store(true, Ordering::SeqCst);
                },
                || {
                    session(|| {
                        start.wait();
                        // Up to 10 s, ending once the freed thread has taken 20 tasks.
                        for _ in 0..20_000 {
                            for_each_index(8, |_| {
                                busy(50);
                                if short_done.load(Ordering::SeqCst) {
                                    if let Some(t) = rayon::current_thread_index() {
                                        late[t].fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            });
                            if late.iter().all(|c| c.load(Ordering::Relaxed) >= 20) {
                                break;
                            }
                        }
                    })
                },
            )
        });
        let late: Vec<usize> = late.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert!(
            late.iter().all(|&c| c >= 20),
            "tasks per thread after the short pass ended: {late:?}"
        );
    }
}
