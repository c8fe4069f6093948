//! The threads of the runtime's parallel steps, kept spinning between them.
//!
//! A decoded token is some 140 short parallel steps (each projection, each layer's attention,
//! the head) with serial work between them. Rayon's workers go to sleep when they find no work
//! and the next step wakes them, a system call and a trip through the scheduler each time.
//! [`for_each`] instead hands a step to workers that spin on a counter after each step, as
//! llama.cpp's threads do, and park only after [`SPIN`] without work, so a pause between
//! requests costs no CPU. The team has one thread fewer than rayon's pool (`--threads`): the
//! caller is the last member.
//!
//! Each member owns a contiguous share of a step's tasks and takes it front to back; one that
//! runs out takes the others' last tasks. Tasks handed out one at a time from a shared counter
//! left each thread's rows in runs of 32 with the other's between them, which broke the
//! hardware prefetchers' streams: on an AMD EPYC (two threads) the int4 products out of
//! cache ran at 16–20 GB/s that way and 27–32 GB/s in shares, the int8 head 29–30 and 36–46.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a worker spins for the next step before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// One parallel step: `run(i)` for every task in the members' shares, in any order, on any
/// member.
#[derive(Clone, Copy)]
struct Step {
    run: *const (dyn Fn(usize) + Sync),
}

/// What the members share. `step` is written only by the poster, before it announces a new
/// `generation`, and read by workers only after they see it; the poster waits for every
/// worker's `finished` before it returns or writes the next step. `shares[k]` holds the tasks
/// member `k` has yet to start, `[front, back)` packed as `front << 32 | back`.
struct Shared {
    generation: AtomicUsize,
    step: UnsafeCell<Step>,
    shares: Vec<AtomicU64>,
    finished: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `step` is only accessed as the protocol above orders it (a release on `generation`
// after each write, an acquire before each read, never both at once).
unsafe impl Sync for Shared {}

/// The team: its shared state, its workers (to unpark them), and the lock a poster holds for
/// a step.
struct Team {
    shared: &'static Shared,
    workers: Vec<Thread>,
    posting: Mutex<()>,
}

/// The process's team, started at its first step with rayon's thread count.
fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let noop: &'static (dyn Fn(usize) + Sync) = &|_| {};
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            step: UnsafeCell::new(Step { run: noop }),
            shares: (0..rayon::current_num_threads().max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        }));
        let workers = (1..rayon::current_num_threads())
            .map(|k| {
                std::thread::Builder::new()
                    .name(format!("andes-runtime-{k}"))
                    .spawn(move || work(shared, k))
                    .expect("a runtime thread")
                    .thread()
                    .clone()
            })
            .collect();
        Team {
            shared,
            workers,
            posting: Mutex::new(()),
        }
    })
}

/// Worker `member`: waits for each step (spinning, then parked), takes its share of the
/// tasks, and says it has finished.
fn work(shared: &'static Shared, member: usize) {
    let mut seen = 0;
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) || idle.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        // SAFETY: a new generation was announced after its step was written (see `Shared`).
        let step = unsafe { *shared.step.get() };
        if catch_unwind(AssertUnwindSafe(|| take_tasks(shared, step, member))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.finished.fetch_add(1, Ordering::Release);
    }
}

/// Runs tasks of `step` until none is left: `member`'s own share from its front, then the
/// others' from their backs.
fn take_tasks(shared: &Shared, step: Step, member: usize) {
    let members = shared.shares.len();
    let others = (1..members).map(|k| (member + k) % members);
    for (share, from_front) in std::iter::once((member, true)).chain(others.map(|k| (k, false))) {
        while let Some(task) = claim(&shared.shares[share], from_front) {
            // SAFETY: the poster keeps `run` alive until every member has finished the step.
            unsafe { (*step.run)(task) };
        }
    }
}

/// A share `[front, back)` as one word.
fn packed(front: u64, back: u64) -> u64 {
    (front << 32) | back
}

/// Takes the first (or last) task of `share`, if any is left.
fn claim(share: &AtomicU64, from_front: bool) -> Option<usize> {
    let mut current = share.load(Ordering::Relaxed);
    loop {
        let (front, back) = (current >> 32, current & u64::from(u32::MAX));
        if front >= back {
            return None;
        }
        let (next, task) = if from_front {
            (packed(front + 1, back), front)
        } else {
            (packed(front, back - 1), back - 1)
        };
        match share.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(task as usize),
            Err(seen) => current = seen,
        }
    }
}

/// `run(i)` for every `i < tasks`, spread over the team and the caller; returns when all have
/// run. A step posted while another thread's step is running (tests run side by side) runs
/// on its caller alone. A panic in any task is raised again here, once every member is done.
pub fn for_each(tasks: usize, run: &(dyn Fn(usize) + Sync)) {
    let team = team();
    let guard = match team.posting.try_lock() {
        Ok(guard) if !team.workers.is_empty() && tasks > 1 => guard,
        _ => return (0..tasks).for_each(run),
    };
    let shared = team.shared;
    // SAFETY: `run` outlives the step: this function returns (or unwinds) only after every
    // worker has finished it, and no worker reads `step` before the next announcement.
    let run: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(run) };
    let step = Step { run };
    // SAFETY: every worker finished the previous step, so none reads `step` now.
    unsafe { *shared.step.get() = step };
    // Member k's share: tasks [k·tasks/members, (k + 1)·tasks/members).
    let (tasks, members) = (tasks as u64, shared.shares.len() as u64);
    assert!(
        tasks <= u64::from(u32::MAX),
        "at most 2^32 - 1 tasks a step"
    );
    for (k, share) in (0..).zip(&shared.shares) {
        let share_of = |k: u64| k * tasks / members;
        share.store(packed(share_of(k), share_of(k + 1)), Ordering::Relaxed);
    }
    shared.finished.store(0, Ordering::Relaxed);
    shared.generation.fetch_add(1, Ordering::Release);
    for worker in &team.workers {
        worker.unpark();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(shared, step, 0)));
    while shared.finished.load(Ordering::Acquire) < team.workers.len() {
        std::hint::spin_loop();
    }
    let theirs = shared.panicked.swap(false, Ordering::Relaxed);
    drop(guard);
    if let Err(panic) = mine {
        resume_unwind(panic);
    }
    assert!(!theirs, "a runtime thread panicked in a parallel step");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs exactly once, step after step, and a panicking task is raised in the
    /// caller with the team still working afterwards.
    #[test]
    fn runs_every_task_once_and_raises_a_tasks_panic() {
        for tasks in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                for_each(tasks, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 50));
        }
        let raised = catch_unwind(|| for_each(8, &|i| assert_ne!(i, 5, "task five")));
        assert!(raised.is_err());
        let sum = AtomicUsize::new(0);
        for_each(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
