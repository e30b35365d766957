/* Futures completed from other threads, and work run on the loop's thread pool.
 *
 * Worker threads compute results and complete futures with rl_future_set_result (or fail one
 * with rl_future_set_error, cancel another); the loop thread awaits them with done callbacks,
 * which always run on the loop thread. A worker also posts callbacks with
 * rl_call_soon_threadsafe, which must run in the order posted. rl_run_in_thread runs a job on the
 * loop's own pool and hands back a future. rl_run() returns once every awaited future is done.
 * Exits 0 when every check holds. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>

#include "example.h"

#define WORKERS 4
#define POSTS 100

struct job {
    rl_loop *loop;
    rl_future *future;
    unsigned index;
    pthread_t thread;
};

static int failed;
static uint64_t results[WORKERS];
static int done_count, posts_seen, post_order_ok = 1, pool_done;
static pthread_t loop_thread;
static pthread_mutex_t failed_lock = PTHREAD_MUTEX_INITIALIZER;

/* Called from the workers too. */
static void expect(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "threadsafe_future: FAIL: %s\n", what);
        pthread_mutex_lock(&failed_lock);
        failed = 1;
        pthread_mutex_unlock(&failed_lock);
    }
}

static void on_post(rl_loop *loop, const rl_outcome *o, void *data);

static uint64_t compute(unsigned index)
{
    uint64_t sum = 0, k;
    for (k = 0; k < 1000000; k++)
        sum += k * (index + 1) % 7919;
    return sum;
}

static void *worker(void *arg)
{
    struct job *job = arg;
    switch (job->index) {
    case 0: {
        /* Posts callbacks to the loop, then completes its future. */
        static int numbers[POSTS];
        int i;
        for (i = 0; i < POSTS; i++) {
            numbers[i] = i;
            CHECK_RL(rl_call_soon_threadsafe(job->loop, on_post, &numbers[i]));
        }
        expect(rl_future_set_result(job->future, compute(0)) == 1, "first completion wins");
        break;
    }
    case 1:
        expect(rl_future_set_error(job->future, -EIO) == 1, "set_error completes");
        expect(rl_future_set_result(job->future, 1) == 0, "a second completion is refused");
        break;
    case 2:
        expect(rl_future_cancel(job->future) == 1, "cancel completes a pending future");
        break;
    default:
        expect(rl_future_set_result(job->future, compute(job->index)) == 1, "set_result completes");
        break;
    }
    return NULL;
}

static void on_post(rl_loop *loop, const rl_outcome *o, void *data)
{
    int number = *(int *)data;
    (void)loop;
    expect(o->result == 0, "posted callback outcome is 0");
    expect(pthread_equal(pthread_self(), loop_thread), "posted callbacks run on the loop thread");
    if (number != posts_seen)
        post_order_ok = 0;
    posts_seen++;
}

static void on_done(rl_loop *loop, const rl_outcome *o, void *data)
{
    struct job *job = data;
    (void)loop;
    expect(pthread_equal(pthread_self(), loop_thread), "done callbacks run on the loop thread");
    switch (job->index) {
    case 1:
        expect(o->result == -EIO, "the failed future reports its error");
        break;
    case 2:
        expect(o->result == -ECANCELED, "the cancelled future reports -ECANCELED");
        break;
    default:
        expect(o->result == 0, "a completed future reports 0");
        results[job->index] = o->value;
    }
    printf("future %u done: result %d, value %llu\n", job->index, o->result,
           (unsigned long long)o->value);
    done_count++;
}

/* Runs on a pool thread. */
static int pool_work(void *data, uint64_t *value)
{
    unsigned *index = data;
    *value = compute(*index);
    return 0;
}

static void on_pool_done(rl_loop *loop, const rl_outcome *o, void *data)
{
    unsigned *index = data;
    (void)loop;
    expect(o->result == 0 && o->value == compute(*index), "the pool job's future holds its result");
    pool_done = 1;
}

int main(void)
{
    rl_loop *loop;
    struct job jobs[WORKERS];
    rl_future *pooled;
    unsigned pool_index = 9, i;
    uint64_t value = 0;

    loop_thread = pthread_self();
    CHECK_RL(rl_loop_new(NULL, &loop));
    printf("threadsafe_future on %s\n", rl_loop_backend(loop));

    for (i = 0; i < WORKERS; i++) {
        jobs[i].loop = loop;
        jobs[i].index = i;
        CHECK_RL(rl_future_new(loop, &jobs[i].future));
        expect(rl_future_state(jobs[i].future) == RL_FUTURE_PENDING, "a new future is pending");
        expect(rl_future_result(jobs[i].future, &value) == RL_ESTATE, "no result while pending");
        CHECK_RL(rl_future_add_done_callback(jobs[i].future, on_done, &jobs[i]));
    }
    CHECK_RL(rl_run_in_thread(loop, pool_work, &pool_index, &pooled));
    CHECK_RL(rl_future_add_done_callback(pooled, on_pool_done, &pool_index));

    for (i = 0; i < WORKERS; i++)
        if (pthread_create(&jobs[i].thread, NULL, worker, &jobs[i]) != 0)
            die_errno("pthread_create");

    /* Pending futures with done callbacks and the pool job keep the loop running. */
    CHECK_RL(rl_run(loop, RL_RUN_DEFAULT));

    for (i = 0; i < WORKERS; i++)
        pthread_join(jobs[i].thread, NULL);
    expect(done_count == WORKERS, "every done callback ran");
    expect(pool_done, "the pool job's done callback ran");
    expect(posts_seen == POSTS && post_order_ok, "posted callbacks ran once each, in order");
    expect(results[0] == compute(0) && results[3] == compute(3), "results came through");

    expect(rl_future_result(jobs[0].future, &value) == 0 && value == compute(0), "result readable");
    expect(rl_future_result(jobs[1].future, &value) == -EIO, "error readable");
    expect(rl_future_result(jobs[2].future, &value) == -ECANCELED, "cancellation readable");
    expect(rl_future_state(jobs[2].future) == RL_FUTURE_CANCELLED, "cancelled state");
    expect(rl_future_state(jobs[3].future) == RL_FUTURE_DONE, "done state");
    for (i = 0; i < WORKERS; i++)
        CHECK_RL(rl_future_release(jobs[i].future));
    CHECK_RL(rl_future_release(pooled));
    expect(rl_future_release(pooled) == RL_EHANDLE, "a second release is RL_EHANDLE");
    expect(rl_future_state(jobs[0].future) == RL_EHANDLE, "a released future is RL_EHANDLE");

    CHECK_RL(rl_loop_free(loop));
    pthread_mutex_destroy(&failed_lock);
    if (failed)
        return 1;
    printf("threadsafe_future: all checks passed\n");
    return 0;
}
