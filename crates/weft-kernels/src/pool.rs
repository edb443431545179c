//! A persistent thread pool for data-parallel kernels.
//!
//! A forward pass issues hundreds of small parallel loops per token, so spawning threads (or
//! going through a general-purpose work-stealing runtime) per call costs more than the work.
//! The pool keeps `n - 1` workers alive; the calling thread is worker 0. A job is published by
//! bumping an epoch counter; workers spin briefly on it, then park on a condvar.
//!
//! A panic in any thread's share does not escape while other threads may still be running
//! the job: it is caught, `run` waits for every share to end, and then re-raises the first
//! panic on the calling thread (as `std::thread::scope` does). The workers survive it, so the
//! pool stays usable, and a caller that catches the panic (the serving engine does) carries on.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How many spins a worker makes on the epoch before parking (about 100 µs): back-to-back
/// kernels (microseconds apart) never park, while an idle pool sleeps.
const SPIN_LIMIT: usize = 5_000;
/// How many spins the caller makes waiting for the workers before yielding its core at each
/// further check: when threads outnumber cores, a descheduled worker needs that core.
const WAIT_SPINS: usize = 500;

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented once per published job.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job; valid while `pending > 0` for the epoch it was published in.
    job: Mutex<Option<SendJob>>,
    wake: Condvar,
    /// Workers parked on `wake` (changed under the `job` lock), so that publishing a job
    /// costs a futex wake only when someone sleeps.
    sleepers: AtomicUsize,
    shutdown: std::sync::atomic::AtomicBool,
    /// The first panic a worker caught in the current job, re-raised by `run`.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Test hook: the thread whose share of the next job panics (`usize::MAX`: none).
    #[cfg(feature = "fault-injection")]
    fail_share: AtomicUsize,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the job pointer is only dereferenced while `ThreadPool::run` keeps the closure alive
// and blocks until every worker has finished with it; the closure itself is `Sync`.
unsafe impl Send for SendJob {}

/// A fixed set of worker threads that run one parallel job at a time.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool with `n_threads` threads in all, the caller included (at least 1).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            panic: Mutex::new(None),
            #[cfg(feature = "fault-injection")]
            fail_share: AtomicUsize::new(usize::MAX),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("weft-worker-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("spawning a kernel worker thread")
            })
            .collect();
        ThreadPool {
            n_threads,
            shared,
            workers,
            run_lock: Mutex::new(()),
        }
    }

    /// The number of threads a job is split across (caller included).
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `job(thread_index)` once on each of the pool's threads and returns when all are
    /// done. Index 0 runs on the calling thread. If any share panics, the panic is re-raised
    /// here once every share has ended.
    pub fn run<F: Fn(usize) + Sync>(&self, job: F) {
        if self.n_threads == 1 {
            self.run_share(&job, 0);
            return;
        }
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let job_ref: &(dyn Fn(usize) + Sync) = &job;
        // SAFETY: the lifetime is erased only for the duration of this call; we wait below
        // until `pending` reaches zero, even when our own share panicked, after which no
        // worker touches the pointer again.
        let job_ptr: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job_ref) };
        let sleepers = {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(SendJob(job_ptr));
            self.shared
                .pending
                .store(self.n_threads - 1, Ordering::Release);
            self.shared.epoch.fetch_add(1, Ordering::AcqRel);
            self.shared.sleepers.load(Ordering::Acquire)
        };
        if sleepers > 0 {
            self.shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| self.run_share(&job, 0)));
        let mut spins = 0usize;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < WAIT_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let worker = self
            .shared
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if let Some(payload) = worker {
            resume_unwind(payload);
        }
    }

    /// Runs share `index` of `job` (where the fault-injection hook can make it panic).
    fn run_share(&self, job: &(dyn Fn(usize) + Sync), index: usize) {
        #[cfg(feature = "fault-injection")]
        self.shared.maybe_fail(index);
        job(index);
    }

    /// Makes share `index` of the next job panic (index 0 is the calling thread), so that
    /// tests can show a panic in a kernel is survived. Only with the `fault-injection`
    /// feature.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_job(&self, index: usize) {
        self.shared.fail_share.store(index, Ordering::SeqCst);
    }

    /// Splits `0..n` into contiguous chunks, one per thread, and runs `f(range)` on each
    /// non-empty chunk.
    pub fn for_each_chunk<F: Fn(std::ops::Range<usize>) + Sync>(&self, n: usize, f: F) {
        let threads = self.n_threads.min(n.max(1));
        if threads <= 1 {
            if n > 0 {
                f(0..n);
            }
            return;
        }
        self.run(|t| {
            let r = chunk_range(n, threads, t);
            if !r.is_empty() {
                f(r);
            }
        });
    }
}

impl ThreadPool {
    /// Runs `f` over `0..n` in pieces of at most `grain`, handed out on demand: a thread that
    /// finishes early, or was scheduled late, takes more pieces, so one slow core does not hold
    /// up the whole job.
    pub fn for_each_dynamic<F: Fn(std::ops::Range<usize>) + Sync>(
        &self,
        n: usize,
        grain: usize,
        f: F,
    ) {
        let mut states = vec![(); self.n_threads];
        self.for_each_dynamic_with(n, grain, &mut states, |_, r| f(r));
    }

    /// Splits `data` (rows of `row_len` values) into one contiguous run of whole rows per
    /// thread and runs `f(first_row, run)` on each: element-wise passes over large
    /// activations (norms, activations functions) without serialising them on one core.
    pub fn for_each_rows_mut<T: Send>(
        &self,
        data: &mut [T],
        row_len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        assert!(
            row_len > 0 && data.len().is_multiple_of(row_len),
            "whole rows"
        );
        let rows = data.len() / row_len;
        let threads = self.n_threads.min(rows);
        if threads <= 1 {
            if rows > 0 {
                f(0, data);
            }
            return;
        }
        let mut parts = Vec::with_capacity(threads);
        let mut rest = data;
        for t in 0..threads {
            let r = chunk_range(rows, threads, t);
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * row_len);
            parts.push((r.start, Mutex::new(run)));
            rest = tail;
        }
        self.run(|t| {
            if let Some((first, run)) = parts.get(t) {
                f(*first, &mut run.lock().unwrap_or_else(|e| e.into_inner()));
            }
        });
    }

    /// Runs `f` over `0..n` in pieces of at most `grain`. Each thread starts on its own
    /// contiguous share, front to back, so a matrix product streams one run of memory per
    /// core, which the hardware prefetcher follows (pieces handed out round-robin make every
    /// core's stream jump). A thread that finishes its share takes pieces of the shares not
    /// yet done, so a descheduled core does not hold up the job.
    pub fn for_each_stealing<F: Fn(std::ops::Range<usize>) + Sync>(
        &self,
        n: usize,
        grain: usize,
        f: F,
    ) {
        let grain = grain.max(1);
        let threads = self.n_threads.min(n.div_ceil(grain));
        if threads <= 1 {
            if n > 0 {
                f(0..n);
            }
            return;
        }
        let shares: Vec<Share> = (0..threads)
            .map(|t| {
                let r = chunk_range(n, threads, t);
                Share {
                    next: AtomicUsize::new(r.start),
                    end: r.end,
                }
            })
            .collect();
        self.run(|t| {
            for i in 0..threads {
                let share = &shares[(t + i) % threads];
                loop {
                    let start = share.next.fetch_add(grain, Ordering::Relaxed);
                    if start >= share.end {
                        break;
                    }
                    f(start..(start + grain).min(share.end));
                }
            }
        });
    }

    /// [`Self::for_each_dynamic`] with per-thread working state that the caller keeps between
    /// calls: the thread with index `t` passes `states[t]` to every piece it runs, so scratch
    /// buffers are allocated once, not once per call. `states` needs one entry per thread.
    pub fn for_each_dynamic_with<S, F>(&self, n: usize, grain: usize, states: &mut [S], f: F)
    where
        S: Send,
        F: Fn(&mut S, std::ops::Range<usize>) + Sync,
    {
        assert!(states.len() >= self.n_threads, "one state per thread");
        let grain = grain.max(1);
        if self.n_threads == 1 || n <= grain {
            if n > 0 {
                f(&mut states[0], 0..n);
            }
            return;
        }
        let next = AtomicUsize::new(0);
        let states = SharedMut(states.as_mut_ptr());
        self.run(|t| {
            // SAFETY: `run` gives each thread its own index below `n_threads`, within
            // `states` (asserted above), so no two threads touch the same state, and the
            // states outlive the call.
            let state = &mut unsafe { states.slice(t, 1) }[0];
            loop {
                let start = next.fetch_add(grain, Ordering::Relaxed);
                if start >= n {
                    break;
                }
                f(state, start..(start + grain).min(n));
            }
        });
    }
}

/// One thread's share of a [`ThreadPool::for_each_stealing`] job: the next unclaimed index
/// and the end. Aligned to its own cache lines so that owners claiming pieces do not contend.
#[repr(align(128))]
struct Share {
    next: AtomicUsize,
    end: usize,
}

/// The `t`-th of `parts` near-equal contiguous pieces of `0..n` (empty when `t >= parts`).
pub fn chunk_range(n: usize, parts: usize, t: usize) -> std::ops::Range<usize> {
    if t >= parts {
        return n..n;
    }
    let base = n / parts;
    let extra = n % parts;
    let start = t * base + t.min(extra);
    let len = base + usize::from(t < extra);
    start..start + len
}

#[cfg(feature = "fault-injection")]
impl Shared {
    fn maybe_fail(&self, index: usize) {
        if self
            .fail_share
            .compare_exchange(index, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            panic!("fault injection: share {index} of a pool job panics");
        }
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        let epoch = loop {
            let e = shared.epoch.load(Ordering::Acquire);
            if e != seen || shared.shutdown.load(Ordering::Acquire) {
                break e;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let guard = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            if shared.epoch.load(Ordering::Acquire) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                shared.sleepers.fetch_add(1, Ordering::AcqRel);
                let guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_sub(1, Ordering::AcqRel);
                drop(guard);
            }
            spins = 0;
        };
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = epoch;
        let job = shared
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a published job");
        let result = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            shared.maybe_fail(index);
            // SAFETY: `run` keeps the closure alive until `pending` drops to zero, which
            // happens only after this call returns (or unwinds into `catch_unwind`).
            unsafe { (*job.0)(index) }
        }));
        if let Err(payload) = result {
            shared
                .panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(payload);
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _guard = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer to a buffer whose elements are partitioned between threads.
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// Copied whatever `T` is: only the pointer is copied (a derive would require `T: Copy`).
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: used only for disjoint accesses from the threads of one `pool.run` call.
unsafe impl<T> Sync for SharedMut<T> {}
unsafe impl<T> Send for SharedMut<T> {}
impl<T> SharedMut<T> {
    /// # Safety
    /// `i` must be in bounds and no other thread may access element `i` concurrently.
    #[inline]
    pub(crate) unsafe fn write(self, i: usize, v: T) {
        // SAFETY: guaranteed by the caller.
        unsafe { *self.0.add(i) = v };
    }

    /// # Safety
    /// `start..start + len` must be in bounds and accessed by no other thread concurrently.
    #[inline]
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_once_per_job() {
        let pool = ThreadPool::new(4);
        for _ in 0..1000 {
            let hits = AtomicU64::new(0);
            pool.run(|t| {
                hits.fetch_add(1 << (8 * t), Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 0x01010101);
        }
    }

    /// A panic in any share reaches the caller only after every share has ended (the
    /// others still use the job's borrowed state), and the pool keeps working afterwards.
    #[test]
    fn a_panicking_share_is_reraised_after_the_others_end() {
        let pool = ThreadPool::new(3);
        for panicking in 0..3 {
            let finished = AtomicU64::new(0);
            let caught = catch_unwind(AssertUnwindSafe(|| {
                pool.run(|t| {
                    if t == panicking {
                        panic!("share {t} fails");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    finished.fetch_add(1, Ordering::SeqCst);
                })
            }));
            let message = caught.expect_err("the panic reaches the caller");
            assert_eq!(
                message.downcast_ref::<String>().map(String::as_str),
                Some(format!("share {panicking} fails").as_str())
            );
            assert_eq!(
                finished.load(Ordering::SeqCst),
                2,
                "the other shares ended first"
            );
            let hits = AtomicU64::new(0);
            pool.for_each_chunk(300, |r| {
                hits.fetch_add(r.len() as u64, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 300);
        }
    }

    #[test]
    fn chunks_cover_the_range_exactly() {
        for n in 0..50 {
            for parts in 1..7 {
                let mut next = 0;
                for t in 0..parts {
                    let r = chunk_range(n, parts, t);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    /// Runs a splitting function over several shapes and checks each index is visited once,
    /// in pieces of at most `grain`.
    fn check_covers_once(split: impl Fn(usize, usize, &(dyn Fn(std::ops::Range<usize>) + Sync))) {
        for (n, grain) in [(0, 4), (1, 4), (1001, 7), (64, 64), (65, 64), (10, 1)] {
            let seen: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            split(n, grain, &|r| {
                assert!(r.len() <= grain);
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n {n} grain {grain}"
            );
        }
    }

    #[test]
    fn for_each_dynamic_covers_every_index_once() {
        let pool = ThreadPool::new(3);
        check_covers_once(|n, grain, f| pool.for_each_dynamic(n, grain, f));
    }

    #[test]
    fn for_each_stealing_covers_every_index_once() {
        let pool = ThreadPool::new(3);
        check_covers_once(|n, grain, f| pool.for_each_stealing(n, grain, f));
    }

    #[test]
    fn idle_threads_take_over_a_slow_threads_share() {
        // Thread 0 (the caller) sleeps on its first piece; the others must finish its share.
        let pool = ThreadPool::new(3);
        let by_caller = AtomicU64::new(0);
        let caller = std::thread::current().id();
        pool.for_each_stealing(300, 1, |r| {
            if std::thread::current().id() == caller {
                if by_caller.fetch_add(1, Ordering::Relaxed) == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50 * r.len() as u64));
            }
        });
        assert!(
            by_caller.load(Ordering::Relaxed) < 100,
            "the caller ran its whole share"
        );
    }

    #[test]
    fn dynamic_states_are_per_thread_and_kept() {
        let pool = ThreadPool::new(3);
        // Each state counts the indices its thread ran; they persist across calls.
        let mut states = vec![0u64; 3];
        for _ in 0..2 {
            pool.for_each_dynamic_with(1000, 3, &mut states, |count: &mut u64, r| {
                *count += r.len() as u64;
            });
        }
        assert_eq!(states.iter().sum::<u64>(), 2000);
    }

    #[test]
    fn rows_mut_gives_each_row_once_with_its_index() {
        let pool = ThreadPool::new(3);
        for rows in [0, 1, 2, 7, 100] {
            let mut data = vec![0usize; rows * 5];
            pool.for_each_rows_mut(&mut data, 5, |first, run| {
                for (i, row) in run.chunks_exact_mut(5).enumerate() {
                    row.iter_mut().for_each(|v| *v += first + i + 1);
                }
            });
            let want: Vec<usize> = (0..rows).flat_map(|r| [r + 1; 5]).collect();
            assert_eq!(data, want);
        }
    }

    #[test]
    fn for_each_chunk_sums() {
        let pool = ThreadPool::new(3);
        let total = AtomicU64::new(0);
        pool.for_each_chunk(1001, |r| {
            total.fetch_add(r.map(|i| i as u64).sum::<u64>(), Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 1000 * 1001 / 2);
    }
}
