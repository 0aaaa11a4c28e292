/* Each row's sum of absolute values, added in order along the row: torch.linalg.vector_norm(x, ord=1, dim=-1)'s
 * bits on the CPU, faster.
 *
 * Built and loaded by nanochat/native.py (plain C, no Python or torch headers). The Hebbian rule's presynaptic
 * statistic is mean |x| over a layer input of (P, N, C) floats, 4 C to a row for the MLP's second layer. ATen's
 * vector_norm(ord=1) on a float CPU tensor adds |x| one element after another along each row (checked: a plain
 * sequential float32 sum gives the same bits, any other order does not), so each add waits for the one before:
 * ~57 ms of a training step at P = 8. Here eight rows are summed side by side, each still strictly in order, so the
 * adds of different rows overlap; the result is bit for bit the sequential sum of each row. Blocks of rows are
 * shared out over torch's OpenMP threads (native.py builds with -fopenmp where it can; see topk.c).
 */
#include <math.h> /* fabsf: clears the sign bit, inlined */
#include <stdint.h>

#define LANES 8

/* out[r] = |x[r, 0]| + |x[r, 1]| + ... + |x[r, n-1]|, summed left to right from 0, for each of `rows` rows of the
 * contiguous (rows, n) x. */
int abs_row_sums(const float *x, int64_t rows, int64_t n, float *out) {
    if (rows < 0 || n < 0) return -1;
    const int64_t blocks = rows / LANES;
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t r = blk * LANES;
        float acc[LANES] = {0.0f};
        const float *row = x + r * n;
        for (int64_t i = 0; i < n; i++)
            for (int l = 0; l < LANES; l++) acc[l] += fabsf(row[l * n + i]);
        for (int l = 0; l < LANES; l++) out[r + l] = acc[l];
    }
    for (int64_t r = blocks * LANES; r < rows; r++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < n; i++) acc += fabsf(x[r * n + i]);
        out[r] = acc;
    }
    return 0;
}
