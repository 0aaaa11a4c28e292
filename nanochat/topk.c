/* Each query's release edges on the CPU: the top k of its allowed keys, listed by key position.
 *
 * Built and loaded by nanochat/native.py (plain C, no Python or torch headers; a fallback in torch gives the same
 * output when no C compiler is found). Input: dots (rows, n) float32, contiguous, one row per (member, batch row,
 * head, query) of one chunk; the chunk's q queries are the last q of the n key positions, so the query in row r
 * may see keys [0, m) with m = n - (q - 1 - r % q). Output per row, k slots:
 *
 *   idx   the chosen key positions in ascending order. The chosen keys are the k largest dots among [0, m), where
 *         NaN counts as the largest value, -0 equals +0, and of equal values the earlier key wins. A row that sees
 *         fewer than k keys (m < k) takes all m and fills slots s = m .. k-1 with position s (a masked key).
 *   vals  the dot of each chosen key, 0 where it is not finite;
 *   valid 1 where that dot is finite, else 0.
 *
 * Why: torch.topk on a CPU costs ~8 ns per (row, key) whatever k (a per-row std::nth_element over (value, index)
 * pairs), about 14% of a training step. Here k = 8 takes two cheap passes and a tiny exact selection:
 *   1. t0 = the smallest of the k maxima of the groups "position mod k". Those k maxima are k distinct keys with
 *      values >= t0, so the k-th largest value is >= t0 and every chosen key has a value >= t0;
 *   2. collect the keys with value >= t0 (about 15 of 256 on attention scores), branch-free;
 *   3. rank the candidates against each other (a candidate is chosen when fewer than k others beat it), which
 *      also emits them in ascending position.
 * Rows with a NaN, short rows and other k take the exact insertion path (the same order, O(m k)).
 */
#ifndef _OPENMP
#include <pthread.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_K 64
#define MAX_RANKED 64 /* candidates ranked pairwise; more go through insertion */

/* A float's place in the order above, as an integer: -inf < ... < -0 = +0 < ... < +inf < NaN. */
static inline int32_t order_key(float f) {
    if (f != f) return INT32_MAX;
    if (f == 0.0f) return 0;
    int32_t u;
    memcpy(&u, &f, sizeof u);
    return u < 0 ? (u ^ 0x7fffffff) : u;
}

/* Exact for any input: a descending list of at most k (key, position), an equal key never displacing an earlier
   one; the result is rewritten in ascending position. Returns how many were chosen (min(np, k)). */
static int64_t select_by_insertion(const float *row, const int32_t *pos, int64_t np, int64_t k, int32_t *out) {
    int32_t key[MAX_K], at[MAX_K];
    int64_t c = 0;
    for (int64_t s = 0; s < np; s++) {
        int32_t x = order_key(row[pos[s]]);
        if (c == k) {
            if (x <= key[k - 1]) continue;
            c--;
        }
        int64_t p = c;
        while (p > 0 && key[p - 1] < x) { key[p] = key[p - 1]; at[p] = at[p - 1]; p--; }
        key[p] = x;
        at[p] = pos[s];
        c++;
    }
    for (int64_t s = 1; s < c; s++) {
        int32_t x = at[s];
        int64_t p = s;
        while (p > 0 && at[p - 1] > x) { at[p] = at[p - 1]; p--; }
        at[p] = x;
    }
    memcpy(out, at, (size_t)c * sizeof *at);
    return c;
}

/* The same choice for at most MAX_RANKED candidates given in ascending position, without branches: candidate a
   is beaten by every b with a larger key and by every earlier b with an equal key. */
static int64_t select_by_rank(const float *row, const int32_t *pos, int64_t np, int64_t k, int32_t *out) {
    int32_t key[MAX_RANKED];
    for (int64_t a = 0; a < np; a++) key[a] = order_key(row[pos[a]]);
    int64_t c = 0;
    for (int64_t a = 0; a < np; a++) {
        int32_t ka = key[a], beaten = 0;
        for (int64_t b = 0; b < a; b++) beaten += key[b] >= ka;
        for (int64_t b = a + 1; b < np; b++) beaten += key[b] > ka;
        out[c] = pos[a];
        c += beaten < k;
    }
    return c;
}

/* Candidates for k = 8 (see the top): positions with value >= t0, or every position when the bound cannot be used
   (a NaN in the row). Returns how many were written to pos. */
static int64_t candidates8(const float *row, int64_t m, int32_t *pos) {
    int nan = 0;
    for (int64_t x = 0; x < m; x++) nan |= row[x] != row[x];
    int64_t np = 0;
    if (nan) {
        for (int64_t x = 0; x < m; x++) pos[np++] = (int32_t)x;
        return np;
    }
    float mx[8];
    for (int a = 0; a < 8; a++) mx[a] = row[a];
    int64_t x = 8;
    for (; x + 8 <= m; x += 8)
        for (int a = 0; a < 8; a++) mx[a] = row[x + a] > mx[a] ? row[x + a] : mx[a];
    for (int a = 0; x + a < m; a++) mx[a] = row[x + a] > mx[a] ? row[x + a] : mx[a];
    float t0 = mx[0];
    for (int a = 1; a < 8; a++) t0 = mx[a] < t0 ? mx[a] : t0;
    for (int64_t y = 0; y < m; y++) {
        pos[np] = (int32_t)y;
        np += row[y] >= t0;
    }
    return np;
}

/* Threads: rows are claimed in blocks of BLOCK_ROWS from a shared counter, by whichever thread is free. Built with
   OpenMP (native.py passes -fopenmp where torch runs on GNU OpenMP), the threads are those of the OpenMP runtime
   that torch's CPU kernels already run on (the library asks for libgomp.so.1, the one torch has loaded): after each
   parallel torch op its worker threads spin for a while waiting for more work, so they pick this up at once.
   Threads of our own (pthreads, the build without OpenMP) would share the cores with those spinning workers, and
   the edges of a chunk computed right after a torch op took twice as long with 2 such threads as with the calling
   thread alone (2 cores). Each row's output depends only on its own scores, so the split cannot change a bit. */
#define BLOCK_ROWS 64

typedef struct {
    const float *dots;
    int64_t rows, n, k, q;
    int64_t next; /* the first row not yet claimed; taken with an atomic add */
    float *vals;
    int64_t *idx;
    uint8_t *valid;
} job_t;

static void edges_of_row(const job_t *job, int64_t r, int32_t *pos) {
    const int64_t n = job->n, k = job->k, q = job->q;
    int32_t chosen[MAX_K];
    const float *row = job->dots + r * n;
    const int64_t m = n - (q - 1 - r % q);
    int64_t np = 0, c;
    if (k == 8 && m > 16) {
        np = candidates8(row, m, pos);
    } else {
        for (int64_t x = 0; x < m; x++) pos[np++] = (int32_t)x;
    }
    c = np <= MAX_RANKED ? select_by_rank(row, pos, np, k, chosen) : select_by_insertion(row, pos, np, k, chosen);
    float *vals = job->vals + r * k;
    int64_t *idx = job->idx + r * k;
    uint8_t *valid = job->valid + r * k;
    for (int64_t s = 0; s < k; s++) {
        if (s < c) {
            float f = row[chosen[s]];
            int finite = f - f == 0.0f;
            vals[s] = finite ? f : 0.0f;
            idx[s] = chosen[s];
            valid[s] = (uint8_t)finite;
        } else {
            vals[s] = 0.0f;
            idx[s] = s;
            valid[s] = 0;
        }
    }
}

/* Claims blocks of rows until none is left; claims none when out of memory. */
static void run_rows(job_t *job) {
    int32_t *pos = malloc((size_t)job->n * sizeof *pos);
    if (!pos) return;
    for (;;) {
        int64_t first = __atomic_fetch_add(&job->next, BLOCK_ROWS, __ATOMIC_RELAXED);
        if (first >= job->rows) break;
        int64_t last = first + BLOCK_ROWS < job->rows ? first + BLOCK_ROWS : job->rows;
        for (int64_t r = first; r < last; r++) edges_of_row(job, r, pos);
    }
    free(pos);
}

#ifndef _OPENMP
static void *run_thread(void *job) {
    run_rows((job_t *)job);
    return NULL;
}
#endif

/* The entry point: rows shared by up to `threads` threads (the calling thread and threads - 1 more).
   Returns 0, or -1 for bad arguments or no memory. */
int top_edges(const float *dots, int64_t rows, int64_t n, int64_t k, int64_t q, float *vals, int64_t *idx,
              uint8_t *valid, int threads) {
    if (k < 1 || k > MAX_K || q < 1 || q > n || n > INT32_MAX || rows < 0) return -1;
    job_t job = {dots, rows, n, k, q, 0, vals, idx, valid};
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    run_rows(&job);
#else
    enum { MAX_THREADS = 64 };
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&handles[t], NULL, run_thread, &job) == 0;
    run_rows(&job);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(handles[t], NULL);
#endif
    return job.next >= rows ? 0 : -1; /* a thread finishes every block it claims; none claims without memory */
}
