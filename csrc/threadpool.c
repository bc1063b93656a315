/* A small persistent pthread pool: nth-1 workers plus the calling thread share each parallel job.
 *
 * One job at a time: call_lock serializes mg_parallel, resizing and shutdown, so two Python threads
 * calling matmul concurrently simply take turns. A job is published by bumping `gen`; each worker runs
 * its share and decrements `pending`; the caller runs share 0, then waits for pending == 0.
 *
 * Waking a sleeping thread through a condition variable costs tens of microseconds on some machines
 * (VMs especially), about what a whole decode mat-vec takes. So both sides spin for a while first
 * (workers right after a job, expecting the next matmul of the same token; the caller while waiting)
 * and only then sleep on the condition variable. Tasks cannot fail (all allocation happens before
 * dispatch), so a job always finishes. After fork() the child has no workers: the atfork handler
 * resets the pool and the next call starts the requested number again.
 */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdlib.h>

#include "kernels.h"

#if defined(_WIN32) || !defined(__GNUC__)

/* No pthreads or no atomics builtins: run every job on the caller. */
void mg_parallel(mg_task_fn fn, void *arg, int max_nth) {
    (void)max_nth;
    fn(arg, 0, 1);
}
int mg_set_threads(int n) { return n == 1 ? 0 : 38 /* ENOSYS */; }
int mg_get_threads(void) { return 1; }
void mg_shutdown(void) {}

#else

#include <errno.h>
#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ROUNDS 10000 /* pause hints before sleeping: roughly 0.05 to 0.6 ms depending on the CPU */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static struct {
    pthread_mutex_t call_lock; /* held for a whole job, resize or shutdown */
    pthread_mutex_t mu;        /* pairs with the condition variables */
    pthread_cond_t start_cv;   /* gen changed or stop set */
    pthread_cond_t done_cv;    /* pending reached 0 */
    pthread_t *threads;        /* (n_workers,) */
    int n_workers;             /* running workers; the caller is thread 0 */
    int want;                  /* threads requested by mg_set_threads, caller included */
    /* shared with the workers (atomics) */
    int stop;
    uint64_t gen;       /* job counter */
    uint64_t spawn_gen; /* gen when the current workers were started */
    int pending;        /* workers still on the current job */
    /* the current job: written before gen is bumped, read after it is seen */
    mg_task_fn fn;
    void *arg;
    int nth;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, NULL, 0, 1, 0, 0, 0, 0, NULL, NULL, 1};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* wait until gen != seen or stop; returns the new gen */
static uint64_t wait_for_job(uint64_t seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (LOAD(&pool.gen) != seen || LOAD(&pool.stop)) return LOAD(&pool.gen);
        CPU_RELAX();
    }
    pthread_mutex_lock(&pool.mu);
    while (LOAD(&pool.gen) == seen && !LOAD(&pool.stop)) pthread_cond_wait(&pool.start_cv, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    return LOAD(&pool.gen);
}

static void *worker_main(void *p) {
    const int id = (int)(intptr_t)p; /* 1..n_workers */
    uint64_t seen = LOAD(&pool.spawn_gen); /* not gen: a job may already be posted when we start */
    for (;;) {
        seen = wait_for_job(seen);
        if (LOAD(&pool.stop)) break;
        if (id < pool.nth) pool.fn(pool.arg, id, pool.nth);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_signal(&pool.done_cv);
            pthread_mutex_unlock(&pool.mu);
        }
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
    STORE(&pool.spawn_gen, LOAD(&pool.gen));
    for (int i = 0; i < n && !err; i++) {
        err = pthread_create(&pool.threads[i], NULL, worker_main, (void *)(intptr_t)(i + 1));
        if (!err) pool.n_workers = i + 1;
    }
    if (err) pool.want = pool.n_workers + 1;
    return err;
}

static void atfork_prepare(void) { pthread_mutex_lock(&pool.call_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&pool.call_lock); }
static void atfork_child(void) {
    /* only the forking thread exists here; the workers' memory is forgotten, not freed by them */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.start_cv, NULL);
    pthread_cond_init(&pool.done_cv, NULL);
    free(pool.threads);
    pool.threads = NULL;
    pool.n_workers = 0;
    pool.stop = 0;
    pool.pending = 0;
    pthread_mutex_unlock(&pool.call_lock);
}
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

void mg_parallel(mg_task_fn fn, void *arg, int max_nth) {
    if (max_nth <= 1) { /* not worth a wake-up */
        fn(arg, 0, 1);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&pool.call_lock);
    if (pool.n_workers + 1 != pool.want) {
        stop_workers();
        start_workers(); /* on failure run with what started; mg_set_threads reports errors */
    }
    const int nth = pool.n_workers + 1 < max_nth ? pool.n_workers + 1 : max_nth;
    if (pool.n_workers == 0 || nth <= 1) {
        fn(arg, 0, 1);
        pthread_mutex_unlock(&pool.call_lock);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.nth = nth;
    STORE(&pool.pending, pool.n_workers); /* every worker acknowledges, even one without a share */
    __atomic_add_fetch(&pool.gen, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&pool.mu); /* wake sleepers; a worker still spinning sees gen by itself */
    pthread_cond_broadcast(&pool.start_cv);
    pthread_mutex_unlock(&pool.mu);

    fn(arg, 0, nth);

    int done = 0;
    for (int i = 0; i < SPIN_ROUNDS && !done; i++) {
        done = LOAD(&pool.pending) == 0;
        if (!done) CPU_RELAX();
    }
    if (!done) {
        pthread_mutex_lock(&pool.mu);
        while (LOAD(&pool.pending) > 0) pthread_cond_wait(&pool.done_cv, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
    }
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
