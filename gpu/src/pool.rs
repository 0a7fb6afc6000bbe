//! The CPU backend's worker threads: [`run_parts`] runs `work(0..parts)` on the calling thread
//! and on threads that live as long as the process.
//!
//! Why not `std::thread::scope` per operation: a training step of the base model runs a few
//! hundred split operations, and creating and joining a thread costs about 60 µs on the 2-core
//! machine (more than many of the operations themselves); a fresh thread also starts with empty
//! packing buffers for the matrix product. Kept workers wait by spinning briefly (the next
//! operation usually comes within microseconds), then sleep on a condition variable.
//!
//! Which thread runs which part never changes a result: every caller's parts write disjoint
//! outputs and each part's arithmetic does not depend on where it runs.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker keeps spinning for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// Runs `work(index)` for every index in `0..parts`, returning when all have run. The calling
/// thread and the kept workers claim the indices in turn. Calls from inside a part run their
/// parts in order on that thread; calls made while another thread's job holds the workers run
/// theirs on fresh scoped threads. A panic in any part is raised again here
/// after every part has stopped.
pub(crate) fn run_parts(parts: usize, work: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || IN_PART.get() {
        (0..parts).for_each(work);
        return;
    }
    let pool = Pool::get();
    let Some(submit) = pool.try_submit() else {
        std::thread::scope(|scope| {
            for index in 1..parts {
                scope.spawn(move || work(index));
            }
            work(0);
        });
        return;
    };
    // SAFETY (of the lifetime erased below): `Posted::drop` withdraws the job and waits until
    // no worker holds it before this frame (and `work`) can go away, also when a part panics.
    let work: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(work) };
    let job = Job { work, parts, next: AtomicUsize::new(0), active: AtomicUsize::new(0), panic: Mutex::new(None) };
    let posted = Posted::new(pool, submit, &job);
    job.help();
    drop(posted);
    let payload = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = payload {
        resume_unwind(payload);
    }
}

thread_local! {
    /// Whether this thread is running a part (nested calls then run in order, here).
    static IN_PART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Job {
    work: &'static (dyn Fn(usize) + Sync),
    parts: usize,
    /// The next index to claim.
    next: AtomicUsize,
    /// Workers that took the job and have not let go of it.
    active: AtomicUsize,
    /// The first panic of a part run by a worker.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl Job {
    /// Claims and runs parts until none is left.
    fn help(&self) {
        let outer = IN_PART.replace(true);
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.parts {
                break;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.work)(index))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(payload);
            }
        }
        IN_PART.set(outer);
    }
}

/// A job's address, handed to workers under the pool's lock.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the job is only read through shared references, and `Posted` keeps it alive while a
// worker may hold the pointer.
unsafe impl Send for JobPtr {}

struct Pool {
    /// Held by the one thread whose job the workers serve.
    submit: Mutex<()>,
    /// The job on offer (taken under this lock).
    slot: Mutex<Option<JobPtr>>,
    wake: Condvar,
    /// Bumped for every posted job (read by spinning workers without the lock).
    generation: AtomicU64,
    /// Whether workers exist (none on a one-thread machine or when threads cannot start).
    started: AtomicBool,
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                submit: Mutex::new(()),
                slot: Mutex::new(None),
                wake: Condvar::new(),
                generation: AtomicU64::new(0),
                started: AtomicBool::new(false),
            }));
            let mut started = 0;
            for index in 1..crate::cpu::parallelism() {
                let spawned =
                    std::thread::Builder::new().name(format!("thitl-cpu-{index}")).spawn(move || pool.serve());
                started += usize::from(spawned.is_ok());
            }
            pool.started.store(started > 0, Ordering::Relaxed);
            pool
        })
    }

    /// The right to post a job, unless another thread's job holds the workers (or there are
    /// none).
    fn try_submit(&self) -> Option<MutexGuard<'_, ()>> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        match self.submit.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn lock_slot(&self) -> MutexGuard<'_, Option<JobPtr>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker's loop: wait for a new job, take it under the lock, help, let go.
    fn serve(&self) {
        let mut seen = self.generation.load(Ordering::Acquire);
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == seen {
                std::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(64) && started.elapsed() > SPIN {
                    break;
                }
            }
            let mut slot = self.lock_slot();
            while self.generation.load(Ordering::Acquire) == seen {
                slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            seen = self.generation.load(Ordering::Acquire);
            let Some(JobPtr(job)) = *slot else {
                continue;
            };
            // SAFETY: the job is in the slot, so its poster has not withdrawn it; registering
            // under the lock keeps it alive until `active` drops back.
            let job = unsafe { &*job };
            job.active.fetch_add(1, Ordering::Acquire);
            drop(slot);
            job.help();
            job.active.fetch_sub(1, Ordering::Release);
        }
    }
}

/// A job in the pool's slot; dropping it withdraws the job and waits for the workers holding it.
struct Posted<'a> {
    pool: &'a Pool,
    job: &'a Job,
    _submit: MutexGuard<'a, ()>,
}

impl<'a> Posted<'a> {
    fn new(pool: &'a Pool, submit: MutexGuard<'a, ()>, job: &'a Job) -> Self {
        let mut slot = pool.lock_slot();
        *slot = Some(JobPtr(job));
        pool.generation.fetch_add(1, Ordering::Release);
        pool.wake.notify_all();
        drop(slot);
        Posted { pool, job, _submit: submit }
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        *self.pool.lock_slot() = None;
        // No worker can take the job now; wait for those that did (their parts are claimed
        // already, so this is as long as the slowest part).
        let mut spins = 0u32;
        while self.job.active.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_also_nested_and_from_several_threads() {
        let counts: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for parts in [0, 1, 2, 3, 7, 64] {
                        for _ in 0..200 {
                            run_parts(parts, &|index| {
                                counts[index].fetch_add(1, Ordering::Relaxed);
                                // A nested call runs inside the part.
                                let inner = AtomicUsize::new(0);
                                run_parts(3, &|_| {
                                    inner.fetch_add(1, Ordering::Relaxed);
                                });
                                assert_eq!(inner.load(Ordering::Relaxed), 3);
                            });
                        }
                    }
                });
            }
        });
        // Parts 0..7 ran in the calls with 7 and 64 parts (and fewer), 200 times per thread.
        let expected = |index: usize| {
            let calls = [1, 2, 3, 7, 64].iter().filter(|&&parts| index < parts).count();
            4 * 200 * calls
        };
        for (index, count) in counts.iter().enumerate() {
            assert_eq!(count.load(Ordering::Relaxed), expected(index), "part {index}");
        }
    }

    #[test]
    fn a_panicking_part_is_raised_again_after_every_part_stopped() {
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            run_parts(8, &|index| {
                if index == 5 {
                    panic!("part 5 fails");
                }
                std::thread::sleep(Duration::from_millis(2));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        let payload = result.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"part 5 fails"));
        assert_eq!(finished.load(Ordering::SeqCst), 7);
        // The pool still serves jobs afterwards.
        let sum = AtomicUsize::new(0);
        run_parts(16, &|index| {
            sum.fetch_add(index, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), (0..16).sum::<usize>());
    }
}
