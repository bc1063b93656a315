/* A small persistent pthread pool whose threads claim the shares of a job as they come.
 *
 * mg_parallel(fn, arg, n) calls fn(arg, s, n) once for every share s < n (n < 1 counts as 1). The
 * caller and the workers take shares from one atomic counter until none is left, and the caller
 * returns as soon as every share has finished. A worker that is slow to wake, or off its core because
 * another process wants it, claims nothing and is waited for by nobody: the threads that are running
 * take its shares. (A worker descheduled in the middle of a share is still waited for; more, smaller
 * shares bound that.)
 *
 * --- protocol
 * claim  = gen << 32 | left: the number of the current job (mod 2^32) and its shares not yet claimed.
 * job    = fn, arg, n: slots owned by the pool, rewritten by the caller only while claim.left == 0.
 * done   = shares of the current job that have finished.
 * Caller, holding call_lock (one job at a time; concurrent mg_parallel calls take turns):
 *   1. write the job slots, done = 0, then claim = (gen + 1, n), which publishes the job;
 *   2. wake the workers if some sleep (n_sleeping);
 *   3. claim and run shares like a worker until left == 0;
 *   4. wait until done == n (spin, yield, then the condition variable), return: arg may be freed.
 * Worker:
 *   1. wait until claim.gen differs from the last job it saw (spin, then sleep); g = claim.gen;
 *   2. read fn, arg, n from the slots;
 *   3. c = claim; stop if c.gen != g or c.left == 0; CAS claim from c to c - 1 (acq_rel), retrying on
 *      failure; on success run fn(arg, n - c.left, n), then done += 1 (release) and, if that made
 *      done == n, wake the caller if it sleeps.
 * Why a late worker is harmless: a successful CAS on (g, left > 0) proves that job g still had an
 * unclaimed share, so it had not finished, so the caller had not rewritten the slots (it does that
 * only after done == n, which needs every later claim). The reads of step 2 precede the CAS, the CAS
 * heads a release sequence that the last claim of job g acquires, and the last claimer's done
 * increment is acquired by the caller before it writes the next job's slots: so step 2 read job g's
 * values. Any other outcome discards what step 2 read without using it: a worker dereferences nothing
 * of a job it holds no share of, and it can only get a share while the job runs. Only claimers
 * increment done and the caller waits for all n of them, so no increment lands in the next job. The
 * slots are atomics, since a late worker may read them while the caller writes them. ABA would need a
 * worker to stall between steps 2 and 3 for a multiple of 2^32 jobs.
 *
 * --- spinning
 * Waking a sleeping thread through a condition variable costs tens of microseconds on VMs, about what
 * a whole decode mat-vec takes, so an idle worker polls for the next job for up to 100 us (the next
 * matmul of a token comes within microseconds, the next token within about that) before it sleeps, and
 * the caller polls for the last shares (at most one share long, unless their thread was descheduled).
 * After 20 us of pause hints, a polling thread calls sched_yield between polls: on a loaded machine a
 * thread that only spins keeps the core from the very thread it waits for. Measured (bench/contention.py
 * and per-token times, 2-core VM shared with other loads): pause-only polling decoded ~1.6x slower;
 * yielding at once or after 20 us, and 100 us or 1 or 10 ms of idle polling, were within the noise.
 *
 * Tasks cannot fail (all allocation happens before dispatch), so a job always finishes. After fork()
 * the child has no workers: the atfork handler resets the pool and the next call starts them again.
 */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdlib.h>

#include "kernels.h"

#if defined(_WIN32) || !defined(__GNUC__)

/* No pthreads or no atomics builtins: run every job on the caller. */
void mg_parallel(mg_task_fn fn, void *arg, int n_shares) {
    if (n_shares < 1) n_shares = 1;
    for (int s = 0; s < n_shares; s++) fn(arg, s, n_shares);
}
int mg_set_threads(int n) { return n == 1 ? 0 : 38 /* ENOSYS */; }
int mg_get_threads(void) { return 1; }
void mg_shutdown(void) {}

#else

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() ((void)0)
#endif

/* polling budgets in nanoseconds; see "spinning" above */
#define IDLE_SPIN_NS 100000  /* an idle worker polls for the next job this long, then sleeps */
#define WAIT_SPIN_NS 2000000 /* the caller polls for the last shares this long, then sleeps */
#define YIELD_AFTER_NS 20000 /* pause-only polling this long, then sched_yield between polls */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define RELAXED_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define RELAXED_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define SC_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define SC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

#define CLAIM_GEN(c) ((uint32_t)((c) >> 32))
#define CLAIM_LEFT(c) ((uint32_t)(c))

static struct {
    pthread_mutex_t call_lock; /* held for a whole job, resize or shutdown */
    pthread_mutex_t mu;        /* pairs with the condition variables */
    pthread_cond_t start_cv;   /* claim.gen changed or stop set; workers sleep here */
    pthread_cond_t done_cv;    /* done reached n; the caller sleeps here */
    pthread_t *threads;        /* (n_workers,) */
    int n_workers;             /* running workers; the caller is the other thread */
    int want;                  /* threads requested by mg_set_threads, caller included */
    /* shared with the workers (atomics) */
    int stop;
    int n_sleeping;     /* workers on start_cv or about to be */
    int caller_waiting; /* the caller is on done_cv or about to be */
    uint32_t spawn_gen; /* claim.gen when the current workers were started */
    /* the current job; claim and done are written by all threads, the slots by the caller only */
    __attribute__((aligned(64))) uint64_t claim;
    int done;
    mg_task_fn fn;
    void *arg;
    int n;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, NULL, 0, 1, 0, 0, 0, 0, 0, 0, NULL, NULL, 0};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* One round of polling that started at t0 (0: not yet timed): pause, then after YIELD_AFTER_NS
 * yield the core. Returns 0 once `budget` ns have passed since t0. Reads the clock every 16 rounds. */
static int poll_again(int64_t *t0, unsigned *round, int64_t budget) {
    if ((++*round & 15) == 0) {
        const int64_t t = now_ns();
        if (*t0 == 0) *t0 = t;
        if (t - *t0 >= budget) return 0;
        if (t - *t0 >= YIELD_AFTER_NS) {
            sched_yield();
            return 1;
        }
    }
    CPU_RELAX();
    return 1;
}

/* worker step 1: wait until claim.gen != seen or stop; returns the new gen */
static uint32_t wait_for_job(uint32_t seen) {
    int64_t t0 = 0;
    unsigned round = 0;
    do {
        if (CLAIM_GEN(LOAD(&pool.claim)) != seen || LOAD(&pool.stop)) return CLAIM_GEN(LOAD(&pool.claim));
    } while (poll_again(&t0, &round, IDLE_SPIN_NS));
    pthread_mutex_lock(&pool.mu);
    SC_STORE(&pool.n_sleeping, SC_LOAD(&pool.n_sleeping) + 1); /* under mu: no lost update */
    while (CLAIM_GEN(SC_LOAD(&pool.claim)) == seen && !LOAD(&pool.stop))
        pthread_cond_wait(&pool.start_cv, &pool.mu);
    SC_STORE(&pool.n_sleeping, SC_LOAD(&pool.n_sleeping) - 1);
    pthread_mutex_unlock(&pool.mu);
    return CLAIM_GEN(LOAD(&pool.claim));
}

/* steps 2 and 3 for job gen g, on a worker or the caller */
static void run_shares(uint32_t g) {
    const mg_task_fn fn = RELAXED_LOAD(&pool.fn);
    void *const arg = RELAXED_LOAD(&pool.arg);
    const int n = RELAXED_LOAD(&pool.n);
    uint64_t c = RELAXED_LOAD(&pool.claim);
    for (;;) {
        if (CLAIM_GEN(c) != g || CLAIM_LEFT(c) == 0) return;
        /* on failure c is reloaded */
        if (!__atomic_compare_exchange_n(&pool.claim, &c, c - 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            continue;
        fn(arg, n - (int)CLAIM_LEFT(c), n);
        if (__atomic_add_fetch(&pool.done, 1, __ATOMIC_SEQ_CST) == n && SC_LOAD(&pool.caller_waiting)) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_signal(&pool.done_cv);
            pthread_mutex_unlock(&pool.mu);
        }
        c = RELAXED_LOAD(&pool.claim);
    }
}

static void *worker_main(void *p) {
    (void)p;
    uint32_t seen = LOAD(&pool.spawn_gen); /* not claim.gen: a job may already be posted when we start */
    for (;;) {
        seen = wait_for_job(seen);
        if (LOAD(&pool.stop)) break;
        run_shares(seen);
    }
    return NULL;
}

/* call_lock held */
static void stop_workers(void) {
    if (pool.n_workers == 0) return;
    pthread_mutex_lock(&pool.mu);
    STORE(&pool.stop, 1);
    pthread_cond_broadcast(&pool.start_cv);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.n_workers = 0;
    STORE(&pool.stop, 0);
}

/* call_lock held; starts want-1 workers and returns 0, or an errno value after lowering `want` to
 * what did start (so a failure is not retried on every call) */
static int start_workers(void) {
    const int n = pool.want - 1;
    int err = 0;
    if (n <= 0) return 0;
    pool.threads = (pthread_t *)malloc((size_t)n * sizeof(pthread_t));
    if (!pool.threads) err = ENOMEM;
    STORE(&pool.spawn_gen, CLAIM_GEN(LOAD(&pool.claim)));
    for (int i = 0; i < n && !err; i++) {
        err = pthread_create(&pool.threads[i], NULL, worker_main, NULL);
        if (!err) pool.n_workers = i + 1;
    }
    if (err) pool.want = pool.n_workers + 1;
    return err;
}

static void atfork_prepare(void) { pthread_mutex_lock(&pool.call_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&pool.call_lock); }
static void atfork_child(void) {
    /* only the forking thread exists here; the workers' memory is forgotten, not freed by them.
     * call_lock was held, so no job was running: claim.left is 0 and done == n. */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.start_cv, NULL);
    pthread_cond_init(&pool.done_cv, NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.n_workers = 0;
    pool.stop = 0;
    pool.n_sleeping = 0;
    pool.caller_waiting = 0;
    pthread_mutex_unlock(&pool.call_lock);
}
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* caller step 4 */
static void wait_for_shares(int n) {
    int64_t t0 = 0;
    unsigned round = 0;
    do {
        if (LOAD(&pool.done) == n) return;
    } while (poll_again(&t0, &round, WAIT_SPIN_NS));
    pthread_mutex_lock(&pool.mu);
    SC_STORE(&pool.caller_waiting, 1);
    while (SC_LOAD(&pool.done) < n) pthread_cond_wait(&pool.done_cv, &pool.mu);
    SC_STORE(&pool.caller_waiting, 0);
    pthread_mutex_unlock(&pool.mu);
}

void mg_parallel(mg_task_fn fn, void *arg, int n_shares) {
    if (n_shares <= 1) { /* not worth a wake-up; callers pass 0 for "too small to split" too */
        fn(arg, 0, 1);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&pool.call_lock);
    if (pool.n_workers + 1 != pool.want) {
        stop_workers();
        start_workers(); /* on failure run with what started; mg_set_threads reports errors */
    }
    if (pool.n_workers == 0) {
        for (int s = 0; s < n_shares; s++) fn(arg, s, n_shares);
        pthread_mutex_unlock(&pool.call_lock);
        return;
    }
    /* step 1: no share of the previous job is claimable, so no worker can be using the slots */
    RELAXED_STORE(&pool.fn, fn);
    RELAXED_STORE(&pool.arg, arg);
    RELAXED_STORE(&pool.n, n_shares);
    RELAXED_STORE(&pool.done, 0);
    const uint32_t g = CLAIM_GEN(RELAXED_LOAD(&pool.claim)) + 1;
    SC_STORE(&pool.claim, (uint64_t)g << 32 | (uint32_t)n_shares);
    if (SC_LOAD(&pool.n_sleeping) > 0) { /* step 2; a worker still polling sees claim by itself */
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.start_cv);
        pthread_mutex_unlock(&pool.mu);
    }
    run_shares(g);
    wait_for_shares(n_shares);
    pthread_mutex_unlock(&pool.call_lock);
}

int mg_set_threads(int n) {
    pthread_once(&atfork_once, register_atfork);
    if (n < 1) n = 1;
    if (n > MG_MAX_THREADS) n = MG_MAX_THREADS;
    pthread_mutex_lock(&pool.call_lock);
    int err = 0;
    if (pool.n_workers + 1 != n || pool.want != n) {
        stop_workers();
        pool.want = n;
        err = start_workers();
    }
    pthread_mutex_unlock(&pool.call_lock);
    return err;
}

int mg_get_threads(void) {
    pthread_mutex_lock(&pool.call_lock);
    const int n = pool.want;
    pthread_mutex_unlock(&pool.call_lock);
    return n;
}

void mg_shutdown(void) {
    pthread_mutex_lock(&pool.call_lock);
    stop_workers();
    pool.want = 1;
    pthread_mutex_unlock(&pool.call_lock);
}

#endif
