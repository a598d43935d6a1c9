// Fused CUDA kernels of horn's cupy backend (horn/backends/cupy_backend.py).
//
// Self-contained on purpose: no #include, only what NVRTC provides built in
// (expf, tanhf, logf, __float_as_uint, __shfl_xor_sync), so the same file
// compiles with NVRTC (cupy.RawModule) and with nvcc (tests/test_cuda_sources.py).
//
// Conventions shared by every kernel:
//   * float arrays are float32 and C-contiguous; index arrays are int64
//     (long long); sizes are passed as long long; flags as int.
//   * elementwise kernels are 1-D grid-stride loops (any grid size is correct);
//   * the row kernels (softmax, softmax_xent) give one warp to a row:
//     blockDim = (32, ROWS_PER_BLOCK), row = blockIdx.x * blockDim.y + threadIdx.y;
//   * the column reductions use blockDim = (32, 8): one column per lane, rows
//     strided over threadIdx.y, then a shared-memory sum (deterministic).
//   * activation codes follow horn.backends.base.ACTIVATIONS:
//     0 identity, 1 relu, 2 tanh, 3 sigmoid.
//
// The mask hash is splitmix64 of (key, flat index), bit-identical to
// horn.backends.numpy_backend.hash_uniform.

#define HORN_GOLDEN 0x9E3779B97F4A7C15ULL
#define HORN_MIX1 0xBF58476D1CE4E5B9ULL
#define HORN_MIX2 0x94D049BB133111EBULL
#define HORN_COLSUM_ROWS 8

typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------
// per-element helpers (host+device so a host program can check them too)
// ---------------------------------------------------------------------------

__host__ __device__ __forceinline__ float horn_uniform(u64 key, u64 i)
{
    u64 z = key + (i + 1ULL) * HORN_GOLDEN;
    z ^= z >> 30;
    z *= HORN_MIX1;
    z ^= z >> 27;
    z *= HORN_MIX2;
    z ^= z >> 31;
    return (float)(z >> 40) * 5.9604644775390625e-08f;  // 2^-24, exact
}

__device__ __forceinline__ float horn_act(float x, int act)
{
    switch (act) {
    case 1: return x > 0.0f ? x : 0.0f;
    case 2: return tanhf(x);
    case 3: return 1.0f / (1.0f + expf(-x));
    default: return x;
    }
}

// dy * act'(y), where y is the activation's output
__device__ __forceinline__ float horn_act_grad(float dy, float y, int act)
{
    switch (act) {
    case 1: return y > 0.0f ? dy : 0.0f;
    case 2: return dy * (1.0f - y * y);
    case 3: return dy * (y * (1.0f - y));
    default: return dy;
    }
}

__device__ __forceinline__ int horn_isfinite(float x)
{
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float horn_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

__device__ __forceinline__ float horn_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define HORN_GRID_STRIDE(idx, n)                                          \
    for (i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x; idx < (n); \
         idx += (i64)blockDim.x * gridDim.x)

// ---------------------------------------------------------------------------
// fused elementwise
// ---------------------------------------------------------------------------

// In place z[i, j] = act(scale * z[i, j] + b[j]) over an (n, m) matrix, size = n*m.
extern "C" __global__ void bias_act(float* z, const float* b, i64 size, i64 m, int act,
                                    float scale)
{
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= size) return;
    const i64 stride = (i64)blockDim.x * gridDim.x;
    // track the column incrementally: one 64-bit modulo per thread, not per element
    i64 j = idx % m;
    const i64 sj = stride % m;
    for (; idx < size; idx += stride) {
        z[idx] = horn_act(z[idx] * scale + b[j], act);
        j += sj;
        if (j >= m) j -= m;
    }
}

// In place dy[i] = dy[i] * act'(y[i]) over size elements.
extern "C" __global__ void act_backward(float* dy, const float* y, i64 size, int act)
{
    HORN_GRID_STRIDE(idx, size) dy[idx] = horn_act_grad(dy[idx], y[idx], act);
}

// act_backward fused with the first stage of the bias gradient: dy is (n, m);
// block (blockIdx.x, blockIdx.y) owns columns [32 bx, 32 bx + 32) of rows
// [by * chunk, (by + 1) * chunk), updates them in place and writes their column
// sums to partial[by, :] (partial is (gridDim.y, m)). col_sum finishes the job.
// blockDim must be (32, HORN_COLSUM_ROWS).
extern "C" __global__ void act_backward_bias(float* dy, const float* y, float* partial,
                                             i64 n, i64 m, int act, i64 chunk)
{
    __shared__ float acc[HORN_COLSUM_ROWS][32];
    const i64 col = (i64)blockIdx.x * 32 + threadIdx.x;
    const i64 lo = (i64)blockIdx.y * chunk;
    i64 hi = lo + chunk;
    if (hi > n) hi = n;
    float s = 0.0f;
    if (col < m) {
        for (i64 r = lo + threadIdx.y; r < hi; r += HORN_COLSUM_ROWS) {
            const i64 k = r * m + col;
            const float g = horn_act_grad(dy[k], y[k], act);
            dy[k] = g;
            s += g;
        }
    }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < m) {
        float t = acc[0][threadIdx.x];
        for (int k = 1; k < HORN_COLSUM_ROWS; ++k) t += acc[k][threadIdx.x];
        partial[(i64)blockIdx.y * m + col] = t;
    }
}

// out[j] = sum_i a[i, j] over an (n, m) matrix (the bias gradient column sum).
// grid = (ceil(m / 32), 1), blockDim = (32, HORN_COLSUM_ROWS). Deterministic.
extern "C" __global__ void col_sum(const float* a, float* out, i64 n, i64 m)
{
    __shared__ float acc[HORN_COLSUM_ROWS][32];
    const i64 col = (i64)blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (col < m)
        for (i64 r = threadIdx.y; r < n; r += HORN_COLSUM_ROWS) s += a[r * m + col];
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < m) {
        float t = acc[0][threadIdx.x];
        for (int k = 1; k < HORN_COLSUM_ROWS; ++k) t += acc[k][threadIdx.x];
        out[col] = t;
    }
}

// out[i] = act(x[i]); out may alias x.
extern "C" __global__ void activation(const float* x, float* out, i64 size, int act)
{
    HORN_GRID_STRIDE(idx, size) out[idx] = horn_act(x[idx], act);
}

// In place a[i] *= s.
extern "C" __global__ void scale(float* a, i64 size, float s)
{
    HORN_GRID_STRIDE(idx, size) a[idx] *= s;
}

// ---------------------------------------------------------------------------
// masks
// ---------------------------------------------------------------------------

// out[i] = hash(key, i) < keep ? x[i] * inv_keep : 0; out may alias x.
// Used for dropout (x = activations, or dy on the way back) and DropConnect.
extern "C" __global__ void dropout(const float* x, float* out, i64 size, u64 key, float keep,
                                   float inv_keep)
{
    HORN_GRID_STRIDE(idx, size)
        out[idx] = horn_uniform(key, (u64)idx) < keep ? x[idx] * inv_keep : 0.0f;
}

// u[i] = hash(key, i): the uniform floats in [0, 1) behind every mask (exposed so
// tests can compare them bit for bit with numpy_backend.hash_uniform).
extern "C" __global__ void hash_uniform(float* u, i64 size, u64 key)
{
    HORN_GRID_STRIDE(idx, size) u[idx] = horn_uniform(key, (u64)idx);
}

// ---------------------------------------------------------------------------
// losses (one warp per row; blockDim = (32, rows per block))
// ---------------------------------------------------------------------------

// For each row i of the (n, c) logits, with z = logits / T and p = softmax(z):
//   loss[i] = -sum_j t_ij log p_ij
//   grad[i, j] = (p_ij - t_ij) * coef          (coef = weight / (n T))
// where t is one-hot(labels[i]) (use_soft == 0) or soft[i, :] (use_soft != 0).
// A label outside [0, c) contributes no target (the row's loss is then 0 and
// its gradient p * coef). grad must not alias logits.
extern "C" __global__ void softmax_xent(const float* logits, const i64* labels,
                                        const float* soft, int use_soft, float* grad,
                                        float* loss, i64 n, i64 c, float inv_t, float coef)
{
    const i64 row = (i64)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n) return;  // whole warp leaves together
    const int lane = threadIdx.x;
    const float* x = logits + row * c;
    float* g = grad + row * c;

    float zmax = -3.402823466e+38f;
    for (i64 j = lane; j < c; j += 32) {
        const float v = x[j] * inv_t;
        zmax = v > zmax ? v : zmax;
    }
    zmax = horn_warp_max(zmax);

    float total = 0.0f;
    for (i64 j = lane; j < c; j += 32) {
        const float e = expf(x[j] * inv_t - zmax);
        g[j] = e;
        total += e;
    }
    total = horn_warp_sum(total);
    const float logz = zmax + logf(total);
    const float inv_total = 1.0f / total;

    const i64 label = use_soft ? -1 : labels[row];
    const float* t = soft + row * c;
    float l = 0.0f;
    for (i64 j = lane; j < c; j += 32) {
        const float tj = use_soft ? t[j] : (j == label ? 1.0f : 0.0f);
        if (tj != 0.0f) l += tj * (logz - x[j] * inv_t);
        g[j] = (g[j] * inv_total - tj) * coef;
    }
    l = horn_warp_sum(l);
    if (lane == 0) loss[row] = l;
}

// Row-wise out = softmax(logits / T); out may alias logits.
extern "C" __global__ void softmax(const float* logits, float* out, i64 n, i64 c, float inv_t)
{
    const i64 row = (i64)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= n) return;
    const int lane = threadIdx.x;
    const float* x = logits + row * c;
    float* o = out + row * c;

    float zmax = -3.402823466e+38f;
    for (i64 j = lane; j < c; j += 32) {
        const float v = x[j] * inv_t;
        zmax = v > zmax ? v : zmax;
    }
    zmax = horn_warp_max(zmax);

    float total = 0.0f;
    for (i64 j = lane; j < c; j += 32) {
        const float e = expf(x[j] * inv_t - zmax);
        o[j] = e;
        total += e;
    }
    total = horn_warp_sum(total);
    const float inv_total = 1.0f / total;
    for (i64 j = lane; j < c; j += 32) o[j] *= inv_total;
}

// ---------------------------------------------------------------------------
// sub-network gather / scatter
// ---------------------------------------------------------------------------

// out (n, m) = parent[rows][:, cols], parent is (*, pm); all_rows / all_cols
// mean "use i / j itself" (the index array is then not read).
extern "C" __global__ void gather(const float* parent, const i64* rows, const i64* cols,
                                  float* out, i64 n, i64 m, i64 pm, int all_rows, int all_cols)
{
    const i64 size = n * m;
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= size) return;
    const i64 stride = (i64)blockDim.x * gridDim.x;
    i64 i = idx / m, j = idx - (idx / m) * m;
    const i64 si = stride / m, sj = stride - si * m;
    for (; idx < size; idx += stride) {
        const i64 r = all_rows ? i : rows[i];
        const i64 cc = all_cols ? j : cols[j];
        out[idx] = parent[r * pm + cc];
        i += si;
        j += sj;
        if (j >= m) { j -= m; ++i; }
    }
}

// parent[rows][:, cols] = compact (n, m); the inverse of gather. Indices must be
// unique (a repeated index is a write race).
extern "C" __global__ void scatter(const float* compact, const i64* rows, const i64* cols,
                                   float* parent, i64 n, i64 m, i64 pm, int all_rows,
                                   int all_cols)
{
    const i64 size = n * m;
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= size) return;
    const i64 stride = (i64)blockDim.x * gridDim.x;
    i64 i = idx / m, j = idx - (idx / m) * m;
    const i64 si = stride / m, sj = stride - si * m;
    for (; idx < size; idx += stride) {
        const i64 r = all_rows ? i : rows[i];
        const i64 cc = all_cols ? j : cols[j];
        parent[r * pm + cc] = compact[idx];
        i += si;
        j += sj;
        if (j >= m) { j -= m; ++i; }
    }
}

// ---------------------------------------------------------------------------
// optimizer updates on flat buffers
// ---------------------------------------------------------------------------

// g' = g + wd p; v = mu v + g'; p -= lr (nesterov ? g' + mu v : v).
// With mu == 0, v is not touched (p -= lr g'); pass any pointer.
extern "C" __global__ void sgd_update(float* p, const float* g, float* v, i64 size, float lr,
                                      float mu, float wd, int nesterov)
{
    HORN_GRID_STRIDE(idx, size) {
        float gi = g[idx] + wd * p[idx];
        if (mu != 0.0f) {
            const float vi = mu * v[idx] + gi;
            v[idx] = vi;
            gi = nesterov ? gi + mu * vi : vi;
        }
        p[idx] -= lr * gi;
    }
}

// Adam with L2 weight decay into the gradient; c1 = 1 - beta1^t, c2 = 1 - beta2^t.
extern "C" __global__ void adam_update(float* p, const float* g, float* m, float* v, i64 size,
                                       float lr, float b1, float b2, float eps, float wd,
                                       float c1, float c2)
{
    HORN_GRID_STRIDE(idx, size) {
        const float gi = g[idx] + wd * p[idx];
        const float mi = b1 * m[idx] + (1.0f - b1) * gi;
        const float vi = b2 * v[idx] + (1.0f - b2) * gi * gi;
        m[idx] = mi;
        v[idx] = vi;
        p[idx] -= lr * (mi / c1) / (sqrtf(vi / c2) + eps);
    }
}

// ---------------------------------------------------------------------------
// reductions
// ---------------------------------------------------------------------------

// *bad is set to 1 if any element is NaN or +-Inf (the caller zeroes it first).
extern "C" __global__ void any_nonfinite(const float* a, i64 size, int* bad)
{
    int found = 0;
    HORN_GRID_STRIDE(idx, size) found |= !horn_isfinite(a[idx]);
    if (found) *bad = 1;  // benign race: every writer stores the same value
}

// ---------------------------------------------------------------------------
// convolution and pooling on (N, C, H, W) images (horn.backends.base documents
// the layouts). A window travels as the 12 sizes of HORN_WINDOW_ARGS (plain
// scalars: what every kernel launcher can pass) and is read as one HornWindow; every kernel is a 1-D
// grid-stride loop over its *output*, and the adjoints (col2im, the pooling
// backwards) gather instead of scattering: no atomics, so sums are deterministic.
// ---------------------------------------------------------------------------

struct HornWindow {
    i64 n, c, h, w;      // input images
    i64 kh, kw, sh, sw, ph, pw;
    i64 oh, ow;          // output size
};

#define HORN_WINDOW_ARGS i64 n, i64 c, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw, \
                         i64 ph, i64 pw, i64 oh, i64 ow
#define HORN_WINDOW const HornWindow g = {n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow}

// [lo, hi]: the outputs i whose window (start i*s - p, length k) covers pixel r.
__device__ __forceinline__ void horn_covering(i64 r, i64 k, i64 s, i64 p, i64 out,
                                              i64* lo, i64* hi)
{
    const i64 top = r + p - k + 1;  // i*s >= top
    *lo = top <= 0 ? 0 : (top + s - 1) / s;
    i64 h = (r + p) / s;
    *hi = h < out - 1 ? h : out - 1;
}

// cols (C*KH*KW, N*OH*OW): cols[(c, a, b), (n, i, j)] = x[n, c, i*sh - ph + a, j*sw - pw + b].
extern "C" __global__ void im2col(const float* x, float* cols, HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    const i64 np = g.n * g.oh * g.ow;
    HORN_GRID_STRIDE(idx, g.c * g.kh * g.kw * np) {
        const i64 row = idx / np, col = idx % np;
        const i64 b = row % g.kw, a = (row / g.kw) % g.kh, c = row / (g.kw * g.kh);
        const i64 j = col % g.ow, i = (col / g.ow) % g.oh, s = col / (g.ow * g.oh);
        const i64 r = i * g.sh - g.ph + a, q = j * g.sw - g.pw + b;
        cols[idx] = (r >= 0 && r < g.h && q >= 0 && q < g.w)
                        ? x[((s * g.c + c) * g.h + r) * g.w + q] : 0.0f;
    }
}

// out (N, C, H, W) = the sum of every column entry read from that pixel.
extern "C" __global__ void col2im(const float* cols, float* out, HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    const i64 np = g.n * g.oh * g.ow;
    HORN_GRID_STRIDE(idx, g.n * g.c * g.h * g.w) {
        const i64 q = idx % g.w, r = (idx / g.w) % g.h;
        const i64 c = (idx / (g.w * g.h)) % g.c, s = idx / (g.w * g.h * g.c);
        i64 i0, i1, j0, j1;
        horn_covering(r, g.kh, g.sh, g.ph, g.oh, &i0, &i1);
        horn_covering(q, g.kw, g.sw, g.pw, g.ow, &j0, &j1);
        float sum = 0.0f;
        for (i64 i = i0; i <= i1; ++i) {
            const i64 a = r + g.ph - i * g.sh;
            for (i64 j = j0; j <= j1; ++j) {
                const i64 b = q + g.pw - j * g.sw;
                sum += cols[((c * g.kh + a) * g.kw + b) * np + (s * g.oh + i) * g.ow + j];
            }
        }
        out[idx] = sum;
    }
}

// Convolution epilogue: z (O, N*P) -> out (N, O, P) = act(z + b[o]).
extern "C" __global__ void bias_act_nchw(const float* z, const float* b, float* out, i64 n,
                                         i64 o, i64 p, int act)
{
    HORN_GRID_STRIDE(idx, n * o * p) {
        const i64 q = idx % p, k = (idx / p) % o, s = idx / (p * o);
        out[idx] = horn_act(z[(k * n + s) * p + q] + b[k], act);
    }
}

// Its backward: dz (O, N*P) = dy * act'(y) from dy, y (N, O, P); row_sum then gives db.
extern "C" __global__ void act_backward_nchw(const float* dy, const float* y, float* dz,
                                             i64 n, i64 o, i64 p, int act)
{
    HORN_GRID_STRIDE(idx, n * o * p) {
        const i64 q = idx % p, s = (idx / p) % n, k = idx / (p * n);
        const i64 src = (s * o + k) * p + q;
        dz[idx] = horn_act_grad(dy[src], y[src], act);
    }
}

// out[r] = sum of row r of a (rows, m): one block of 256 threads per row, a fixed
// shared-memory tree (deterministic). blockDim must be 256.
extern "C" __global__ void row_sum(const float* a, float* out, i64 rows, i64 m)
{
    __shared__ float acc[256];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < m; j += 256) s += a[r * m + j];
        acc[threadIdx.x] = s;
        __syncthreads();
        for (int half = 128; half > 0; half >>= 1) {
            if (threadIdx.x < half) acc[threadIdx.x] += acc[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) out[r] = acc[0];
        __syncthreads();
    }
}

// out, argmax (N, C, OH, OW): window maxima and the winner's index in its H*W plane
// (the first maximum in row-major window order, as on the CPU).
extern "C" __global__ void max_pool(const float* x, float* out, int* argmax, HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    HORN_GRID_STRIDE(idx, g.n * g.c * g.oh * g.ow) {
        const i64 j = idx % g.ow, i = (idx / g.ow) % g.oh, plane = idx / (g.ow * g.oh);
        const float* src = x + plane * g.h * g.w;
        float best = 0.0f;
        i64 where = -1;
        for (i64 a = 0; a < g.kh; ++a) {
            const i64 r = i * g.sh - g.ph + a;
            if (r < 0 || r >= g.h) continue;
            for (i64 b = 0; b < g.kw; ++b) {
                const i64 q = j * g.sw - g.pw + b;
                if (q < 0 || q >= g.w) continue;
                const float v = src[r * g.w + q];
                if (where < 0 || v > best) {
                    best = v;
                    where = r * g.w + q;
                }
            }
        }
        out[idx] = best;
        argmax[idx] = (int)where;
    }
}

// dx (N, C, H, W): the sum of dy over the windows covering a pixel that it won.
extern "C" __global__ void max_pool_backward(const float* dy, const int* argmax, float* dx,
                                             HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    HORN_GRID_STRIDE(idx, g.n * g.c * g.h * g.w) {
        const i64 q = idx % g.w, r = (idx / g.w) % g.h, plane = idx / (g.w * g.h);
        i64 i0, i1, j0, j1;
        horn_covering(r, g.kh, g.sh, g.ph, g.oh, &i0, &i1);
        horn_covering(q, g.kw, g.sw, g.pw, g.ow, &j0, &j1);
        float sum = 0.0f;
        for (i64 i = i0; i <= i1; ++i)
            for (i64 j = j0; j <= j1; ++j) {
                const i64 o = (plane * g.oh + i) * g.ow + j;
                if (argmax[o] == r * g.w + q) sum += dy[o];
            }
        dx[idx] = sum;
    }
}

// Window means, padding counted as zeros (divides by KH*KW).
extern "C" __global__ void avg_pool(const float* x, float* out, HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    const float inv = 1.0f / (float)(g.kh * g.kw);
    HORN_GRID_STRIDE(idx, g.n * g.c * g.oh * g.ow) {
        const i64 j = idx % g.ow, i = (idx / g.ow) % g.oh, plane = idx / (g.ow * g.oh);
        const float* src = x + plane * g.h * g.w;
        float sum = 0.0f;
        for (i64 a = 0; a < g.kh; ++a) {
            const i64 r = i * g.sh - g.ph + a;
            if (r < 0 || r >= g.h) continue;
            for (i64 b = 0; b < g.kw; ++b) {
                const i64 q = j * g.sw - g.pw + b;
                if (q >= 0 && q < g.w) sum += src[r * g.w + q];
            }
        }
        out[idx] = sum * inv;
    }
}

// dx = dy / (KH*KW) summed over the windows covering each pixel.
extern "C" __global__ void avg_pool_backward(const float* dy, float* dx, HORN_WINDOW_ARGS)
{
    HORN_WINDOW;
    const float inv = 1.0f / (float)(g.kh * g.kw);
    HORN_GRID_STRIDE(idx, g.n * g.c * g.h * g.w) {
        const i64 q = idx % g.w, r = (idx / g.w) % g.h, plane = idx / (g.w * g.h);
        i64 i0, i1, j0, j1;
        horn_covering(r, g.kh, g.sh, g.ph, g.oh, &i0, &i1);
        horn_covering(q, g.kw, g.sw, g.pw, g.ow, &j0, &j1);
        float sum = 0.0f;
        for (i64 i = i0; i <= i1; ++i)
            for (i64 j = j0; j <= j1; ++j) sum += dy[(plane * g.oh + i) * g.ow + j];
        dx[idx] = sum * inv;
    }
}

// ---------------------------------------------------------------------------
// compressed exchanges (horn.barriers.compress): error feedback fused with the
// codec, the same arithmetic as numba_backend's kernels (tested bit for bit there)
// ---------------------------------------------------------------------------

// (host-callable too: tests compile them for the CPU and compare with numpy bit for bit)
__host__ __device__ __forceinline__ unsigned int horn_bits(float v)
{
    union { float f; unsigned int u; } pun;
    pun.f = v;
    return pun.u;
}

// IEEE half bits of v: round to nearest even, saturating at +-65504.
__host__ __device__ __forceinline__ unsigned int horn_fp16_bits(float v)
{
    const unsigned int f = horn_bits(v);
    const unsigned int sign = (f >> 16) & 0x8000u;
    const long long e = (long long)((f >> 23) & 0xffu) - 112;
    long long m = f & 0x7fffffu;
    if (e >= 31) return sign | 0x7bffu;
    if (e <= 0) {
        if (e < -10) return sign;
        m |= 0x800000;
        const long long shift = 14 - e;
        long long h = m >> shift;
        const long long rem = m & ((1LL << shift) - 1), half = 1LL << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h += 1;
        return sign | (unsigned int)h;
    }
    long long h = (e << 10) | (m >> 13);
    const long long rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h += 1;
    return sign | (unsigned int)(h < 0x7bff ? h : 0x7bff);
}

// bfloat16 bits of v: round to nearest even, saturating at the largest finite value.
__host__ __device__ __forceinline__ unsigned int horn_bf16_bits(float v)
{
    const unsigned int f = horn_bits(v);
    if ((f & 0x7fffffffu) > 0x7f7f0000u) return ((f >> 16) & 0x8000u) | 0x7f7fu;
    return (unsigned int)(((unsigned long long)f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

__host__ __device__ __forceinline__ float horn_half_value(unsigned int h, int brain)
{
    const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
    if (brain) {
        const int e = (h >> 7) & 0xff, m = h & 0x7f;
        return sign * (e == 0 ? ldexpf((float)m, -133) : ldexpf((float)(m + 128), e - 134));
    }
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    return sign * (e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m + 1024), e - 25));
}

// v = x + residual; out = half(v); residual = v - value(out).
extern "C" __global__ void compress_half(const float* x, float* residual, unsigned short* out,
                                         i64 size, int brain)
{
    HORN_GRID_STRIDE(idx, size) {
        const float v = x[idx] + residual[idx];
        const unsigned int h = brain ? horn_bf16_bits(v) : horn_fp16_bits(v);
        out[idx] = (unsigned short)h;
        residual[idx] = v - horn_half_value(h, brain);
    }
}

extern "C" __global__ void decompress_half_add(const unsigned short* h, float* out, i64 size,
                                               int brain)
{
    HORN_GRID_STRIDE(idx, size) out[idx] += horn_half_value(h[idx], brain);
}

// One block of values [lo, hi): scale = max|v| / 127, q = floor(v / scale + 0.5).
__host__ __device__ __forceinline__ void horn_int8_block(const float* x, float* residual,
                                                         float* scale, signed char* q, i64 lo,
                                                         i64 hi)
{
    float amax = 0.0f;
    for (i64 i = lo; i < hi; ++i) amax = fmaxf(amax, fabsf(x[i] + residual[i]));
    const float s = amax / 127.0f;
    *scale = s;
    for (i64 i = lo; i < hi; ++i) {
        const float v = x[i] + residual[i];
        const float k = s > 0.0f ? fminf(fmaxf(floorf(v / s + 0.5f), -127.0f), 127.0f) : 0.0f;
        q[i] = (signed char)k;
        residual[i] = v - k * s;
    }
}

// One thread per block of values.
extern "C" __global__ void compress_int8(const float* x, float* residual, float* scales,
                                         signed char* q, i64 size, i64 block, i64 blocks)
{
    HORN_GRID_STRIDE(b, blocks) {
        const i64 lo = b * block, hi = lo + block < size ? lo + block : size;
        horn_int8_block(x, residual, scales + b, q, lo, hi);
    }
}

extern "C" __global__ void decompress_int8_add(const signed char* q, const float* scales,
                                               float* out, i64 size, i64 block)
{
    HORN_GRID_STRIDE(idx, size) out[idx] += (float)q[idx] * scales[idx / block];
}
