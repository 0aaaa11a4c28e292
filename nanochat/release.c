/* The release step's arithmetic on the CPU, in three passes around torch's transcendentals.
 *
 * Built and loaded by nanochat/native.py (plain C, no Python or torch headers). PresynapticState.release in
 * synaptic.py is the definition; this file computes the same numbers with fewer passes: run op by op in torch, the
 * step is ~90 small tensor ops per chunk (a sixth of a CPU forward pass at P = 8), most of them a multiply or an
 * add over 65k floats. Here each pass visits an edge or a key once.
 *
 * Bit for bit the same as the torch ops: every +, -, * and / below is one IEEE float operation in the order the
 * torch expression evaluates it (the library is compiled with -ffp-contract=off, so no multiply-add is fused), the
 * clamps and minimum propagate NaN like ATen's, and sums over a key's edges are taken in the order of the edges, as
 * CPU scatter_add does. The sigmoids and softplus stay in torch (a C expf is not ATen's vectorised exp):
 *
 *   sensor_args    gathers each edge's key state and writes the four sigmoid arguments of release_probability;
 *                  torch takes their sigmoids;
 *   edge_release   each edge's release probability and release (drawn for stochastic rows), and the per-key sums
 *                  of release, drive and valid edges, plus |release x amp| per edge for the running mean;
 *                  torch takes softplus(drive);
 *   key_update     pools, calcium, SNAREs, clamp, amplitude and energy of every key, in place.
 *
 * Layout: rows = P x B x H (member-major), each with T key positions of state (c, rrp, ...: (rows, T) float32) and
 * E = Qc x K edges (idx int64 < n_keys, vals float32, valid uint8). Per-member knobs are one (P, N_KNOBS) table in
 * the order of the enum below; a row's member is row / rows_per_member. Rows are independent, so each pass shares
 * them out over an OpenMP team (torch's own CPU threads: see topk.c and native.py; native.py builds without OpenMP
 * where the compiler has none, and the pragmas are then ignored) without changing a bit. Threads of our own made
 * the step slower at P = 8 and P = 16 on 2 cores: torch's OpenMP workers spin between ops, and took the cores.
 */
#include <math.h> /* fabsf: clears the sign bit, inlined */
#include <stdint.h>
#include <string.h>

enum {
    K_TAU_C, K_ALPHA_C, K_SYT1, K_SYT7, K_DOC2, K_CPX_THRESH, K_COMPLEXIN_BIAS, K_STOCHASTIC_FRAC, K_REC_RATE,
    K_INIT_RRP, K_PRIME_RATE, K_UNPRIME, K_NSF_RECOVER, K_INIT_CLAMP, K_AMP_LOAD, K_AMP_LEAK, K_INIT_AMP,
    K_ENERGY_FILL, K_ENERGY_USE, N_KNOBS
};

#define MAX_BINOMIAL_N 8
#define ROWS_PER_CLAIM 4 /* rows a thread takes at a time: whichever thread is free takes the next */

/* ATen's clamp / clamp_min / minimum on floats: NaN passes through, and a value equal to a bound is kept (so -0
 * stays -0). Written as selects the compiler turns into min/max/blend instructions: a branch on the data here
 * mispredicted often enough to make a key cost ~20 ns. */
static inline float clamp_min(float x, float lo) { return lo > x ? lo : x; }
static inline float clamp(float x, float lo, float hi) {
    x = lo > x ? lo : x;
    return hi < x ? hi : x;
}
static inline float minimum(float a, float b) {
    const float m = b < a ? b : a; /* a when either is NaN */
    return b != b ? b : m;
}

/* torch.round (half to even) of x in [0, MAX_BINOMIAL_N] or NaN; x - floor(x) is exact there. */
static inline float round_half_even(float x) {
    if (x != x) return x;
    float f = (float)(int32_t)x;
    float d = x - f;
    if (d > 0.5f || (d == 0.5f && ((int32_t)f & 1))) f += 1.0f;
    return f;
}

typedef struct {
    /* shapes */
    int64_t rows, T, E, Qc, K, n_keys, rows_per_member, endo_delay, n_edges;
    const float *knobs;
    /* state, (rows, T) */
    float *c, *rrp, *res, *sn, *cl, *amp, *en, *queue;
    /* edges, (rows, E) */
    const int64_t *idx;
    const float *vals, *sp_vals, *sig, *row_u, *u;
    int64_t row_u_stride, u_stride; /* elements between members' draws: 0 when all members share one draw */
    const uint8_t *valid;
    float *args, *prod;
    /* keys, (rows, n_keys) each; sums holds released, drive, count one after the other */
    float *sums;
    const float *sp_drive;
} Job;

static void sensor_args_rows(const Job *j) {
    const int64_t E = j->E, N = j->n_edges;
#pragma omp parallel for schedule(dynamic, ROWS_PER_CLAIM)
    for (int64_t r = 0; r < j->rows; r++) {
        const float *kn = j->knobs + (r / j->rows_per_member) * N_KNOBS;
        const float tau = kn[K_TAU_C], alpha = kn[K_ALPHA_C], syt1 = kn[K_SYT1], syt7 = kn[K_SYT7];
        const float cpx = kn[K_CPX_THRESH], bias = kn[K_COMPLEXIN_BIAS];
        const float *restrict c = j->c + r * j->T, *restrict cl = j->cl + r * j->T;
        const int64_t *restrict idx = j->idx + r * E;
        const float *restrict sp = j->sp_vals + r * E;
        float *restrict a1 = j->args + r * E, *restrict a2 = a1 + N, *restrict a3 = a2 + N, *restrict a4 = a3 + N;
        for (int64_t e = 0; e < E; e++) {
            const int64_t key = idx[e];
            const float c_e = tau * c[key] + alpha * sp[e]; /* c_e = tau c + alpha softplus(vals) */
            a1[e] = syt1 * (c_e - 0.55f);
            a2[e] = syt7 * (c_e - 0.25f);
            a3[e] = 4.0f * (c_e - 0.12f);
            a4[e] = 8.0f * (c_e - cpx) - 2.0f * (cl[key] + bias);
        }
    }
}

#define EDGE_BLOCK 256

/* One row's edges, a block at a time: gather the keys' state, then the release probability and release of every
 * edge (no branch on the data), then the Binomial draws of the stochastic query rows, then the per-key sums in edge
 * order. */
static void edge_release_rows(const Job *j) {
    const int64_t N = j->n_edges, E = j->E, Qc = j->Qc, K = j->K, nk = j->n_keys, rows = j->rows;
#pragma omp parallel for schedule(dynamic, ROWS_PER_CLAIM)
    for (int64_t r = 0; r < j->rows; r++) {
        float g_sn[EDGE_BLOCK], g_rrp[EDGE_BLOCK], g_amp[EDGE_BLOCK], prob[EDGE_BLOCK], rel[EDGE_BLOCK];
        const int64_t member = r / j->rows_per_member, in_member = r % j->rows_per_member;
        const float *kn = j->knobs + member * N_KNOBS;
        const float doc2 = kn[K_DOC2], frac = kn[K_STOCHASTIC_FRAC];
        const float *row_u = j->row_u ? j->row_u + member * j->row_u_stride + in_member * Qc : NULL;
        const float *u = j->u ? j->u + member * j->u_stride + in_member * E * MAX_BINOMIAL_N : NULL;
        const float *sn = j->sn + r * j->T, *rrp = j->rrp + r * j->T, *amp = j->amp + r * j->T;
        const int64_t *idx = j->idx + r * E;
        const float *vals = j->vals + r * E, *s1 = j->sig + r * E, *s2 = s1 + N, *s3 = s2 + N, *s4 = s3 + N;
        const uint8_t *valid = j->valid + r * E;
        float *released = j->sums + r * nk, *drive = released + rows * nk, *count = drive + rows * nk;
        float *prod = j->prod + r * E;
        for (int64_t key = 0; key < nk; key++) released[key] = drive[key] = count[key] = 0.0f;
        for (int64_t e0 = 0; e0 < E; e0 += EDGE_BLOCK) {
            const int64_t n = E - e0 < EDGE_BLOCK ? E - e0 : EDGE_BLOCK;
            for (int64_t i = 0; i < n; i++) {
                const int64_t key = idx[e0 + i];
                g_sn[i] = sn[key], g_rrp[i] = rrp[key], g_amp[i] = amp[key];
            }
            for (int64_t i = 0; i < n; i++) {
                const int64_t e = e0 + i;
                const float sensors = (0.8f * s1[e] + 0.2f * s2[e]) + doc2 * s3[e];
                prob[i] = clamp(sensors * s4[e] * g_sn[i], 0.0f, 0.999f);
                rel[i] = prob[i] * g_rrp[i];
            }
            for (int64_t e = e0; u != NULL && e < e0 + n;) { /* Binomial(round(clamp(rrp, 0, 8)), p) draws */
                const int64_t q = e / K, end = (q + 1) * K < e0 + n ? (q + 1) * K : e0 + n;
                if (!(row_u[q] < frac)) {
                    e = end;
                    continue;
                }
                for (; e < end; e++) {
                    const float p = prob[e - e0];
                    const float trials = round_half_even(clamp(g_rrp[e - e0], 0.0f, (float)MAX_BINOMIAL_N));
                    const float *uu = u + e * MAX_BINOMIAL_N;
                    int hits = 0;
                    for (int b = 0; b < MAX_BINOMIAL_N; b++) hits += (uu[b] < p) & ((float)b < trials);
                    rel[e - e0] = (float)hits;
                }
            }
            for (int64_t i = 0; i < n; i++) {
                const int64_t e = e0 + i, key = idx[e];
                const float v = (float)valid[e], x = rel[i] * v;
                released[key] += x;
                drive[key] += vals[e];
                count[key] += v;
                prod[e] = fabsf(x * g_amp[i]);
            }
        }
    }
}

#define KEY_BLOCK 64

typedef struct {
    float tau, rate, rec, init_rrp, prime, unprime, nsf, init_clamp, amp_load, amp_leak, init_amp, fill, use;
} KeyKnobs;

/* n keys' update; `queued`: the reserve takes head (the queue's oldest entry) instead of rec x release. Returns
 * each key's release in rel_out (the queue's newest entry is rec x it). No branch on the data: it vectorises. */
static inline void key_block(const KeyKnobs *kk, int64_t n, int queued, const float *restrict released,
                             const float *restrict count, const float *restrict sp, const float *restrict head,
                             float *restrict c, float *restrict rrp, float *restrict res, float *restrict sn,
                             float *restrict cl, float *restrict amp, float *restrict en, float *restrict rel_out) {
    const KeyKnobs k = *kk;
    for (int64_t i = 0; i < n; i++) {
        const float rel = minimum(released[i], rrp[i]); /* no more than the pool holds */
        c[i] = k.tau * c[i] + k.rate * sp[i] * (float)(count[i] > 0.0f);
        const float pool = rrp[i] - rel;
        const float reserve = queued ? res[i] + head[i] : res[i] + k.rec * rel;
        const float room = clamp_min(1.0f - pool / k.init_rrp, 0.0f);
        const float energy = en[i];
        const float flux = minimum(k.prime * reserve * room * energy, reserve);
        res[i] = reserve - flux;
        rrp[i] = pool + flux;
        const float s = sn[i], h = cl[i], a = amp[i];
        sn[i] = clamp(s - k.unprime * rel + k.nsf * (1.0f - s), 0.0f, 1.0f);
        cl[i] = clamp_min(h + k.nsf * (k.init_clamp - h) - k.unprime * rel * h, 0.0f);
        amp[i] = clamp_min(a + k.amp_load * rel - k.amp_leak * (a - k.init_amp), 0.0f);
        en[i] = clamp(energy + k.fill * (1.0f - energy) - k.use * rel, 0.0f, 1.0f);
        rel_out[i] = rel;
    }
}

static void key_update_rows(const Job *j) {
    const int64_t nk = j->n_keys, D = j->endo_delay, R = j->rows, T = j->T;
#pragma omp parallel for schedule(dynamic, ROWS_PER_CLAIM)
    for (int64_t r = 0; r < j->rows; r++) {
        float head[KEY_BLOCK], rel[KEY_BLOCK];
        const float *kn = j->knobs + (r / j->rows_per_member) * N_KNOBS;
        const KeyKnobs kk = {kn[K_TAU_C], (1.0f - kn[K_TAU_C]) * kn[K_ALPHA_C], kn[K_REC_RATE], kn[K_INIT_RRP],
                             kn[K_PRIME_RATE], kn[K_UNPRIME], kn[K_NSF_RECOVER], kn[K_INIT_CLAMP], kn[K_AMP_LOAD],
                             kn[K_AMP_LEAK], kn[K_INIT_AMP], kn[K_ENERGY_FILL], kn[K_ENERGY_USE]};
        const float *released = j->sums + r * nk, *count = j->sums + 2 * R * nk + r * nk;
        const float *sp = j->sp_drive + r * nk;
        for (int64_t k0 = 0; k0 < nk; k0 += KEY_BLOCK) {
            const int64_t n = nk - k0 < KEY_BLOCK ? nk - k0 : KEY_BLOCK, i0 = r * T + k0;
            float *queue = D > 0 ? j->queue + i0 * D : NULL;
            for (int64_t i = 0; D > 0 && i < n; i++) head[i] = queue[i * D];
            if (D > 0)
                key_block(&kk, n, 1, released + k0, count + k0, sp + k0, head, j->c + i0, j->rrp + i0,
                          j->res + i0, j->sn + i0, j->cl + i0, j->amp + i0, j->en + i0, rel);
            else
                key_block(&kk, n, 0, released + k0, count + k0, sp + k0, head, j->c + i0, j->rrp + i0,
                          j->res + i0, j->sn + i0, j->cl + i0, j->amp + i0, j->en + i0, rel);
            for (int64_t i = 0; D > 0 && i < n; i++) { /* the queue moves up one; this release enters last */
                float *qu = queue + i * D;
                for (int64_t d = 0; d + 1 < D; d++) qu[d] = qu[d + 1];
                qu[D - 1] = kk.rec * rel[i];
            }
        }
    }
}

/* args (4, rows, E): the arguments of release_probability's four sigmoids at each edge. */
int sensor_args(const float *c, const float *cl, int64_t T, const int64_t *idx, const float *sp_vals, int64_t rows,
                int64_t E, int64_t rows_per_member, const float *knobs, float *args) {
    if (rows < 0 || E < 1 || T < 1 || rows_per_member < 1) return -1;
    Job j;
    memset(&j, 0, sizeof j);
    j.c = (float *)c, j.cl = (float *)cl, j.T = T, j.idx = idx, j.sp_vals = sp_vals, j.E = E, j.rows = rows;
    j.n_edges = rows * E, j.rows_per_member = rows_per_member, j.knobs = knobs, j.args = args;
    sensor_args_rows(&j);
    return 0;
}

/* sums (3, rows, n_keys): released, drive and valid count per key; prod (rows, E): |release x amp| per edge.
 * sig (4, rows, E) are the sigmoids of sensor_args' output; row_u (rows, Qc) and u (rows, E, 8) are the
 * stochastic draws, or both NULL when no row is stochastic; each member's draws are contiguous, row_u_stride and
 * u_stride elements apart (0 when every member reads the same draws). */
int edge_release(const float *sn, const float *rrp, const float *amp, int64_t T, const int64_t *idx,
                 const float *vals, const uint8_t *valid, const float *sig, const float *row_u, int64_t row_u_stride,
                 const float *u, int64_t u_stride, int64_t rows, int64_t Qc, int64_t K, int64_t n_keys,
                 int64_t rows_per_member, const float *knobs, float *sums, float *prod) {
    if (rows < 0 || Qc < 1 || K < 1 || n_keys < 1 || n_keys > T || rows_per_member < 1) return -1;
    if ((row_u == NULL) != (u == NULL)) return -1;
    Job j;
    memset(&j, 0, sizeof j);
    j.sn = (float *)sn, j.rrp = (float *)rrp, j.amp = (float *)amp, j.T = T, j.idx = idx, j.vals = vals;
    j.valid = valid, j.sig = sig, j.row_u = row_u, j.u = u, j.row_u_stride = row_u_stride, j.u_stride = u_stride;
    j.rows = rows, j.Qc = Qc, j.K = K, j.E = Qc * K, j.n_edges = rows * Qc * K, j.n_keys = n_keys;
    j.rows_per_member = rows_per_member, j.knobs = knobs, j.sums = sums, j.prod = prod;
    edge_release_rows(&j);
    return 0;
}

/* Every key's state advanced in place from sums (edge_release) and sp_drive = softplus(drive) (rows, n_keys);
 * queue (rows, T, endo_delay) when endo_delay > 0. */
int key_update(float *c, float *rrp, float *res, float *sn, float *cl, float *amp, float *en, float *queue,
               int64_t T, int64_t endo_delay, const float *sums, const float *sp_drive, int64_t rows, int64_t n_keys,
               int64_t rows_per_member, const float *knobs) {
    if (rows < 0 || n_keys < 1 || n_keys > T || rows_per_member < 1 || endo_delay < 0) return -1;
    if (endo_delay > 0 && queue == NULL) return -1;
    Job j;
    memset(&j, 0, sizeof j);
    j.c = c, j.rrp = rrp, j.res = res, j.sn = sn, j.cl = cl, j.amp = amp, j.en = en, j.queue = queue, j.T = T;
    j.endo_delay = endo_delay, j.sums = (float *)sums, j.sp_drive = sp_drive, j.n_keys = n_keys, j.rows = rows;
    j.rows_per_member = rows_per_member, j.knobs = knobs;
    key_update_rows(&j);
    return 0;
}
