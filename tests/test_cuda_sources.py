"""The CUDA kernels of the cupy backend.

Two kinds of test:

* source tests, which need only ``nvcc`` (no GPU): kernels.cu compiles, exports
  every kernel the backend launches, stays NVRTC-friendly (no #include), and its
  splitmix64 hash, compiled for the host from the very same file, is bit-identical
  to ``numpy_backend.hash_uniform``;
* GPU tests, which run every kernel of ``get_backend("cupy")`` against the numpy
  reference backend (masks exactly equal, the rest allclose). They are skipped
  where CuPy or a CUDA device is missing.
"""

import ast
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from horn.backends import available_backends, get_backend
from horn.backends.base import ACTIVATIONS, KEY_MASK
from horn.backends.numpy_backend import NumpyBackend, hash_uniform

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS_CU = ROOT / "horn" / "backends" / "cuda" / "kernels.cu"
CUPY_BACKEND_PY = ROOT / "horn" / "backends" / "cupy_backend.py"

EXPECTED_KERNELS = (
    "bias_act",
    "act_backward",
    "act_backward_bias",
    "col_sum",
    "activation",
    "scale",
    "dropout",
    "hash_uniform",
    "softmax_xent",
    "softmax",
    "gather",
    "scatter",
    "sgd_update",
    "adam_update",
    "any_nonfinite",
    "im2col",
    "col2im",
    "bias_act_nchw",
    "act_backward_nchw",
    "row_sum",
    "max_pool",
    "max_pool_backward",
    "avg_pool",
    "avg_pool_backward",
    "compress_half",
    "decompress_half_add",
    "compress_int8",
    "decompress_int8_add",
)

HASH_KEYS = (0, 1, 12345, 0x0123456789ABCDEF, KEY_MASK)

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
needs_gpu = pytest.mark.skipif(
    "cupy" not in available_backends(), reason="no CUDA GPU (cupy not installed or no device)"
)


# ---------------------------------------------------------------------------
# source tests (no GPU)
# ---------------------------------------------------------------------------


def _declared_kernel_names():
    """KERNEL_NAMES of cupy_backend.py, read without importing cupy."""
    tree = ast.parse(CUPY_BACKEND_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "KERNEL_NAMES" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("cupy_backend.py defines no KERNEL_NAMES")


def test_backend_launches_exactly_the_expected_kernels():
    assert sorted(_declared_kernel_names()) == sorted(EXPECTED_KERNELS)
    source = CUPY_BACKEND_PY.read_text()
    for name in EXPECTED_KERNELS:
        assert f'"{name}"' in source


def test_kernels_cu_is_self_contained():
    text = KERNELS_CU.read_text()
    assert not re.search(r"^\s*#\s*include", text, re.M), "NVRTC gets no system headers"
    for name in EXPECTED_KERNELS:
        assert re.search(rf'extern "C" __global__ void {name}\(', text), name


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel(tmp_path, arch):
    ptx = tmp_path / "kernels.ptx"
    proc = subprocess.run(
        [NVCC, "--ptx", f"-arch={arch}", "-o", str(ptx), str(KERNELS_CU)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.read_text()))
    missing = [name for name in EXPECTED_KERNELS if name not in entries]
    assert not missing, f"kernels missing from the PTX: {missing} (found {sorted(entries)})"


_HOST_HASH_MAIN = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "%s"

int main(int argc, char** argv)
{
    unsigned long long key = strtoull(argv[1], 0, 10);
    long long n = atoll(argv[2]);
    FILE* f = fopen(argv[3], "wb");
    for (long long i = 0; i < n; ++i) {
        float u = horn_uniform(key, (unsigned long long)i);
        unsigned int bits;
        memcpy(&bits, &u, sizeof bits);
        fwrite(&bits, sizeof bits, 1, f);
    }
    fclose(f);
    return 0;
}
"""


@needs_nvcc
def test_hash_in_kernels_cu_is_bit_identical_to_numpy(tmp_path):
    main = tmp_path / "hash_main.cu"
    main.write_text(_HOST_HASH_MAIN % KERNELS_CU.as_posix())
    exe = tmp_path / "hash_main"
    proc = subprocess.run(
        [NVCC, "-arch=sm_80", "-o", str(exe), str(main)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    n = 100_003
    for key in HASH_KEYS:
        out = tmp_path / f"u_{key}.bin"
        run = subprocess.run([str(exe), str(key), str(n), str(out)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        got = np.fromfile(out, dtype=np.uint32)
        want = hash_uniform(key, n).view(np.uint32)
        np.testing.assert_array_equal(got, want, err_msg=f"key={key}")


_HOST_CODEC_MAIN = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include "%s"

// argv: n block in.bin out.bin -- x (n float32) then residual (n float32) in; out: fp16
// bits, bf16 bits (n uint16 each), int8 scales, q and residual, then decoded fp16, bf16.
int main(int argc, char** argv)
{
    const long long n = atoll(argv[1]), block = atoll(argv[2]), nb = (n + block - 1) / block;
    float* x = (float*)malloc(n * sizeof(float));
    float* r = (float*)malloc(n * sizeof(float));
    FILE* in = fopen(argv[3], "rb");
    if (fread(x, sizeof(float), n, in) != (size_t)n || fread(r, sizeof(float), n, in) != (size_t)n)
        return 1;
    fclose(in);
    FILE* out = fopen(argv[4], "wb");
    for (int brain = 0; brain < 2; ++brain)
        for (long long i = 0; i < n; ++i) {
            const float v = x[i] + 0.0f;  // v = x + residual, as compress_half (residual 0)
            unsigned short h = (unsigned short)(brain ? horn_bf16_bits(v) : horn_fp16_bits(v));
            fwrite(&h, sizeof h, 1, out);
        }
    float* scales = (float*)malloc(nb * sizeof(float));
    signed char* q = (signed char*)malloc(n);
    for (long long b = 0; b < nb; ++b)
        horn_int8_block(x, r, scales + b, q, b * block, (b + 1) * block < n ? (b + 1) * block : n);
    fwrite(scales, sizeof(float), nb, out);
    fwrite(q, 1, n, out);
    fwrite(r, sizeof(float), n, out);
    for (int brain = 0; brain < 2; ++brain)
        for (long long i = 0; i < n; ++i) {
            const float y = x[i] + 0.0f;
            float v = horn_half_value(brain ? horn_bf16_bits(y) : horn_fp16_bits(y), brain);
            fwrite(&v, sizeof v, 1, out);
        }
    fclose(out);
    return 0;
}
"""


def _codec_inputs(n):
    """Values over float32's whole range: subnormal halves, ties, saturation, zeros."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-40, 14, n))).astype(np.float32)
    x[:8] = [0.0, -0.0, 65504.0, 65519.0, 65520.0, -70000.0, 2.0**-25, 3e38]
    return x, (rng.standard_normal(n) * 1e-3).astype(np.float32)


@needs_nvcc
def test_codecs_in_kernels_cu_are_bit_identical_to_numpy(tmp_path):
    from horn.backends.base import message_size

    main = tmp_path / "codec_main.cu"
    main.write_text(_HOST_CODEC_MAIN % KERNELS_CU.as_posix())
    exe = tmp_path / "codec_main"
    proc = subprocess.run(
        [NVCC, "-arch=sm_80", "-o", str(exe), str(main)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    n, block = 30_011, 128
    x, r = _codec_inputs(n)
    np.concatenate([x, r]).tofile(tmp_path / "in.bin")
    run = subprocess.run(
        [str(exe), str(n), str(block), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    got = np.fromfile(tmp_path / "out.bin", dtype=np.uint8)
    for codec in ("fp16", "bf16"):
        want = np.empty(message_size(codec, n, block), np.uint8)
        ref.compress(codec, x, np.zeros(n, np.float32), block, want)
        np.testing.assert_array_equal(got[: 2 * n], want, err_msg=codec)
        decoded = np.zeros(n, np.float32)
        ref.decompress_add(codec, want, block, decoded)
        at = len(got) - (4 * n if codec == "bf16" else 8 * n)
        np.testing.assert_array_equal(got[at : at + 4 * n].view(np.float32), decoded, err_msg=codec)
        got = got[2 * n :] if codec == "fp16" else got
    got = got[2 * n :]  # past the bf16 bits: the int8 message and residual
    want, residual = np.empty(message_size("int8", n, block), np.uint8), r.copy()
    ref.compress("int8", x, residual, block, want)
    np.testing.assert_array_equal(got[: len(want)], want)
    np.testing.assert_array_equal(got[len(want) : len(want) + 4 * n].view(np.float32), residual)


# ---------------------------------------------------------------------------
# GPU tests: every kernel against the numpy reference
# ---------------------------------------------------------------------------

ref = NumpyBackend()

# (1, 1): degenerate; (3, 33): column count not a multiple of 32; (2000, 777):
# more elements than the grid has threads (grid-stride column tracking).
ELEMENTWISE_SHAPES = [(1, 1), (7, 13), (3, 33), (64, 256), (2000, 777)]
# (5000, 37) and (3000, 1025) take the multi-chunk bias-gradient path.
BACKWARD_SHAPES = [(1, 1), (7, 13), (64, 1), (1, 300), (5000, 37), (3000, 1025)]
SOFTMAX_SHAPES = [(1, 1), (1, 10), (7, 10), (33, 37), (300, 1000), (5, 3000)]


@pytest.fixture(scope="module")
def gpu():
    return get_backend("cupy")


def _rng(*seed):
    return np.random.default_rng(list(seed) if seed else 0)


def _randn(rng, shape, s=1.0):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def _act_input(rng, shape, act):
    """A valid activation output y for act (what act_backward receives)."""
    y = _randn(rng, shape, 2.0)
    out = np.empty_like(y)
    ref.activation(y, act, out)
    return out


@needs_gpu
def test_backend_basics(gpu):
    assert gpu.name == "cupy"
    assert gpu.xp.__name__ == "cupy"
    a = _randn(_rng(), (5, 4))
    d = gpu.asarray(a)
    assert isinstance(d, gpu.xp.ndarray)
    gpu.synchronize()
    h = gpu.to_host(d)
    assert isinstance(h, np.ndarray)
    np.testing.assert_array_equal(h, a)


@needs_gpu
def test_kernel_source_is_package_data(gpu):
    from horn.backends.cupy_backend import kernel_source

    assert kernel_source() == KERNELS_CU.read_text()


@needs_gpu
@pytest.mark.parametrize("key", HASH_KEYS)
def test_hash_uniform_bit_identical(gpu, key):
    n = 1_000_003  # larger than the grid: exercises the grid-stride loop
    got = gpu.to_host(gpu.hash_uniform(key, n)).view(np.uint32)
    np.testing.assert_array_equal(got, hash_uniform(key, n).view(np.uint32))


@needs_gpu
@pytest.mark.parametrize("shape", [(1,), (7, 13), (128, 300), (1000, 1001)])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8, 0.999])
@pytest.mark.parametrize("key", [3, 0x7FFF_1234_ABCD_0001])
def test_dropout_exact(gpu, shape, keep, key):
    rng = _rng(len(shape), int(keep * 1000))
    x = _randn(rng, shape) + np.float32(3.0)  # no zeros, so the mask is visible in out
    want = np.empty_like(x)
    ref.dropout(x, key, keep, want)

    out = gpu.xp.empty(shape, dtype=np.float32)
    gpu.dropout(gpu.asarray(x), key, keep, out)
    got = gpu.to_host(out)
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_array_equal(got, want)

    # in place, and as DropConnect
    d = gpu.asarray(x)
    gpu.dropout(d, key, keep, d)
    np.testing.assert_array_equal(gpu.to_host(d), want)
    w = gpu.xp.empty(shape, dtype=np.float32)
    gpu.mask_weights(gpu.asarray(x), key, keep, w)
    np.testing.assert_array_equal(gpu.to_host(w), want)


@needs_gpu
def test_dropout_backward_reuses_the_mask(gpu):
    rng = _rng(7)
    x = _randn(rng, (64, 50)) + np.float32(3.0)
    dy = _randn(rng, (64, 50)) + np.float32(3.0)
    key, keep = 99, 0.6
    fwd = gpu.xp.empty_like(gpu.asarray(x))
    bwd = gpu.xp.empty_like(fwd)
    gpu.dropout(gpu.asarray(x), key, keep, fwd)
    gpu.dropout(gpu.asarray(dy), key, keep, bwd)
    np.testing.assert_array_equal(gpu.to_host(fwd) != 0, gpu.to_host(bwd) != 0)
    want = np.empty_like(dy)
    ref.dropout(dy, key, keep, want)
    np.testing.assert_array_equal(gpu.to_host(bwd), want)


@needs_gpu
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act(gpu, act, scale, shape):
    rng = _rng(shape[0], shape[1])
    z = _randn(rng, shape, 2.0)
    b = _randn(rng, shape[1:])
    want = z.copy()
    ref.bias_act(want, b, act, scale)
    d = gpu.asarray(z)
    gpu.bias_act(d, gpu.asarray(b), act, scale)
    np.testing.assert_allclose(gpu.to_host(d), want, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("shape", BACKWARD_SHAPES)
@pytest.mark.parametrize("with_db", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_backward(gpu, act, with_db, shape):
    rng = _rng(shape[0], shape[1], int(with_db))
    y = _act_input(rng, shape, act)
    dy = _randn(rng, shape)
    want = dy.copy()
    want_db = np.empty(shape[1], dtype=np.float32) if with_db else None
    ref.act_backward(want, y, act, want_db)

    d = gpu.asarray(dy)
    db = gpu.xp.full(shape[1], np.nan, dtype=np.float32) if with_db else None
    gpu.act_backward(d, gpu.asarray(y), act, db)
    np.testing.assert_allclose(gpu.to_host(d), want, rtol=1e-5, atol=1e-6)
    if with_db:
        # column sums of up to 5000 float32 terms, summed in a different order
        np.testing.assert_allclose(
            gpu.to_host(db), want_db, rtol=1e-4, atol=1e-5 * np.sqrt(shape[0])
        )


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (5000, 37), (3000, 1025)])
def test_bias_grad_col_sum(gpu, shape):
    dy = _randn(_rng(shape[0], 11), shape)
    db = gpu.xp.empty(shape[1], dtype=np.float32)
    gpu.bias_grad(gpu.asarray(dy), db)
    np.testing.assert_allclose(
        gpu.to_host(db), dy.sum(axis=0, dtype=np.float64), rtol=1e-4, atol=1e-5 * np.sqrt(shape[0])
    )


@needs_gpu
@pytest.mark.parametrize("shape", [(1,), (7, 13), (2000, 777)])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation(gpu, act, shape):
    x = _randn(_rng(len(shape), 5), shape, 3.0)
    want = np.empty_like(x)
    ref.activation(x, act, want)
    out = gpu.xp.empty(shape, dtype=np.float32)
    gpu.activation(gpu.asarray(x), act, out)
    np.testing.assert_allclose(gpu.to_host(out), want, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("s", [0.0, -1.5, 0.125, 3.0])
@pytest.mark.parametrize("shape", [(1,), (33, 17), (2000, 777)])
def test_scale(gpu, shape, s):
    a = _randn(_rng(len(shape)), shape)
    want = a.copy()
    ref.scale(want, s)
    d = gpu.asarray(a)
    gpu.scale(d, s)
    np.testing.assert_allclose(gpu.to_host(d), want, rtol=1e-6, atol=0)


def _soft_targets(rng, shape):
    t = np.exp(_randn(rng, shape, 2.0)).astype(np.float64)
    t[rng.random(shape) < 0.3] = 0.0  # some exact zeros
    t[:, 0] += 1e-3  # no all-zero row
    return (t / t.sum(axis=1, keepdims=True)).astype(np.float32)


@needs_gpu
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
@pytest.mark.parametrize("temperature,weight", [(1.0, 1.0), (2.5, 0.3), (0.5, 4.0)])
@pytest.mark.parametrize("kind", ["labels64", "labels32", "soft"])
def test_softmax_xent(gpu, kind, temperature, weight, shape):
    rng = _rng(shape[0], shape[1], len(kind))
    logits = _randn(rng, shape, 3.0)
    if kind == "soft":
        targets = _soft_targets(rng, shape)
    else:
        targets = rng.integers(0, shape[1], shape[0]).astype(
            np.int64 if kind == "labels64" else np.int32
        )
    want_grad = np.empty_like(logits)
    want = ref.softmax_xent(logits, targets, want_grad, temperature, weight)

    grad = gpu.xp.full(shape, np.nan, dtype=np.float32)
    got = gpu.softmax_xent(gpu.asarray(logits), gpu.asarray(targets), grad, temperature, weight)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-5, abs=2e-5)
    scale = weight / (shape[0] * temperature)
    np.testing.assert_allclose(gpu.to_host(grad), want_grad, rtol=1e-4, atol=1e-6 * scale)


@needs_gpu
def test_softmax_xent_accepts_host_targets(gpu):
    rng = _rng(3)
    logits = _randn(rng, (20, 10))
    labels = rng.integers(0, 10, 20)
    want_grad = np.empty_like(logits)
    want = ref.softmax_xent(logits, labels, want_grad)
    grad = gpu.xp.empty((20, 10), dtype=np.float32)
    got = gpu.softmax_xent(gpu.asarray(logits), labels, grad)
    assert got == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(gpu.to_host(grad), want_grad, rtol=1e-4, atol=1e-7)


@needs_gpu
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_softmax(gpu, temperature, shape):
    logits = _randn(_rng(shape[0], shape[1]), shape, 3.0)
    want = np.empty_like(logits)
    ref.softmax(logits, want, temperature)
    out = gpu.xp.empty(shape, dtype=np.float32)
    gpu.softmax(gpu.asarray(logits), out, temperature)
    got = gpu.to_host(out)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def _indices(rng, n, k, kind):
    if kind == "all":
        return None
    idx = rng.choice(n, size=k, replace=False)
    return np.sort(idx) if kind == "sorted" else idx


INDEX_KINDS = ["all", "sorted", "shuffled"]
GATHER_SIZES = [((50, 40), (17, 9)), ((1, 1), (1, 1)), ((3000, 700), (2000, 500))]


@needs_gpu
@pytest.mark.parametrize("sizes", GATHER_SIZES)
@pytest.mark.parametrize("col_kind", INDEX_KINDS)
@pytest.mark.parametrize("row_kind", INDEX_KINDS)
def test_gather(gpu, row_kind, col_kind, sizes):
    (pn, pm), (k, l) = sizes
    rng = _rng(pn, pm, len(row_kind), len(col_kind))
    parent = _randn(rng, (pn, pm))
    rows, cols = _indices(rng, pn, k, row_kind), _indices(rng, pm, l, col_kind)
    want = np.empty((pn if rows is None else k, pm if cols is None else l), dtype=np.float32)
    ref.gather(parent, rows, cols, want)

    out = gpu.xp.full(want.shape, np.nan, dtype=np.float32)
    dev_rows = None if rows is None else gpu.asarray(rows)
    dev_cols = None if cols is None else gpu.asarray(cols)
    gpu.gather(gpu.asarray(parent), dev_rows, dev_cols, out)
    np.testing.assert_array_equal(gpu.to_host(out), want)


@needs_gpu
@pytest.mark.parametrize("sizes", GATHER_SIZES)
@pytest.mark.parametrize("col_kind", INDEX_KINDS)
@pytest.mark.parametrize("row_kind", INDEX_KINDS)
def test_scatter(gpu, row_kind, col_kind, sizes):
    (pn, pm), (k, l) = sizes
    rng = _rng(pn, pm, len(row_kind), len(col_kind), 1)
    parent = _randn(rng, (pn, pm))
    rows, cols = _indices(rng, pn, k, row_kind), _indices(rng, pm, l, col_kind)
    compact = _randn(rng, (pn if rows is None else k, pm if cols is None else l))
    want = parent.copy()
    ref.scatter(compact, rows, cols, want)

    d = gpu.asarray(parent)
    dev_rows = None if rows is None else gpu.asarray(rows)
    dev_cols = None if cols is None else gpu.asarray(cols)
    gpu.scatter(gpu.asarray(compact), dev_rows, dev_cols, d)
    np.testing.assert_array_equal(gpu.to_host(d), want)


@needs_gpu
def test_gather_scatter_accept_host_indices(gpu):
    rng = _rng(21)
    parent = _randn(rng, (30, 20))
    rows, cols = rng.choice(30, 10, replace=False), rng.choice(20, 5, replace=False)
    want = np.empty((10, 5), dtype=np.float32)
    ref.gather(parent, rows, cols, want)
    out = gpu.xp.empty((10, 5), dtype=np.float32)
    gpu.gather(gpu.asarray(parent), rows, cols, out)
    np.testing.assert_array_equal(gpu.to_host(out), want)

    back = gpu.xp.zeros((30, 20), dtype=np.float32)
    gpu.scatter(out, rows, cols, back)
    want_back = np.zeros((30, 20), dtype=np.float32)
    ref.scatter(want, rows, cols, want_back)
    np.testing.assert_array_equal(gpu.to_host(back), want_back)


@needs_gpu
@pytest.mark.parametrize("size", [1, 1000, 1_000_003])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_update(gpu, momentum, nesterov, weight_decay, size):
    rng = _rng(size, int(momentum * 10), int(nesterov))
    p, v = _randn(rng, size), _randn(rng, size, 0.1)
    dp, dv = gpu.asarray(p), gpu.asarray(v)
    for _ in range(3):
        g = _randn(rng, size)
        ref.sgd_update(p, g, v if momentum else None, 0.05, momentum, weight_decay, nesterov)
        gpu.sgd_update(
            dp, gpu.asarray(g), dv if momentum else None, 0.05, momentum, weight_decay, nesterov
        )
    np.testing.assert_allclose(gpu.to_host(dp), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu.to_host(dv), v, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("size", [1, 1000, 1_000_003])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_update(gpu, weight_decay, size):
    rng = _rng(size, int(weight_decay * 100))
    p = _randn(rng, size)
    m, v = np.zeros(size, np.float32), np.zeros(size, np.float32)
    dp, dm, dv = gpu.asarray(p), gpu.asarray(m), gpu.asarray(v)
    for t in range(1, 5):
        g = _randn(rng, size)
        ref.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, weight_decay, t)
        gpu.adam_update(dp, gpu.asarray(g), dm, dv, 1e-3, 0.9, 0.999, 1e-8, weight_decay, t)
    np.testing.assert_allclose(gpu.to_host(dm), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gpu.to_host(dv), v, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(gpu.to_host(dp), p, rtol=1e-5, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "last", "middle"])
@pytest.mark.parametrize("size", [1, 257, 1_000_003])
def test_all_finite(gpu, size, where, bad):
    a = _randn(_rng(size), size, 1e30)  # huge but finite values stay finite
    if bad is not None:
        a[{"first": 0, "last": size - 1, "middle": size // 2}[where]] = bad
    assert gpu.all_finite(gpu.asarray(a)) is ref.all_finite(a)
    assert gpu.all_finite(gpu.asarray(a)) is (bad is None)


@needs_gpu
def test_all_finite_empty_and_2d(gpu):
    assert gpu.all_finite(gpu.xp.empty(0, dtype=np.float32)) is True
    a = np.ones((40, 30), dtype=np.float32)
    assert gpu.all_finite(gpu.asarray(a)) is True
    a[39, 29] = np.nan
    assert gpu.all_finite(gpu.asarray(a)) is False


# (images, kernel, stride, padding): odd sizes, rectangular windows, overlapping and
# padded windows, and a batch larger than the grid (grid-stride loops)
WINDOWS = [
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)),
    ((3, 2, 9, 9), (3, 2), (2, 1), (1, 0)),
    ((2, 4, 8, 7), (2, 2), (2, 2), (0, 0)),
    ((64, 32, 14, 14), (3, 3), (1, 1), (1, 1)),
]


def _window_out(shape, kernel, stride, pad):
    from horn.backends.base import out_size

    n, c, h, w = shape
    return out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])


@needs_gpu
@pytest.mark.parametrize("shape,kernel,stride,pad", WINDOWS)
def test_im2col_and_col2im(gpu, shape, kernel, stride, pad):
    x = _randn(_rng(*shape), shape)
    oh, ow = _window_out(shape, kernel, stride, pad)
    cols = (shape[1] * kernel[0] * kernel[1], shape[0] * oh * ow)
    want = np.empty(cols, np.float32)
    ref.im2col(x, kernel, stride, pad, want)
    got = gpu.xp.full(cols, np.nan, dtype=np.float32)
    gpu.im2col(gpu.asarray(x), kernel, stride, pad, got)
    np.testing.assert_array_equal(gpu.to_host(got), want)
    c = _randn(_rng(7), cols)
    want_dx = np.empty(shape, np.float32)
    ref.col2im(c, kernel, stride, pad, want_dx)
    dx = gpu.xp.full(shape, np.nan, dtype=np.float32)
    gpu.col2im(gpu.asarray(c), kernel, stride, pad, dx)
    np.testing.assert_allclose(gpu.to_host(dx), want_dx, rtol=1e-5, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("n,o,p", [(1, 1, 1), (3, 5, 7), (128, 64, 196)])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_conv_epilogue(gpu, n, o, p, act):
    rng = _rng(n, o, p)
    z, b = _randn(rng, (o, n * p)), _randn(rng, (o,))
    want = np.empty((n, o, p), np.float32)
    ref.bias_act_nchw(z, b, act, want)
    y = gpu.xp.full((n, o, p), np.nan, dtype=np.float32)
    gpu.bias_act_nchw(gpu.asarray(z), gpu.asarray(b), act, y)
    np.testing.assert_allclose(gpu.to_host(y), want, rtol=1e-5, atol=1e-6)
    dy = _randn(rng, (n, o, p))
    want_dz, want_db = np.empty((o, n * p), np.float32), np.empty(o, np.float32)
    ref.act_backward_nchw(dy, want, act, want_dz, want_db)
    dz = gpu.xp.full((o, n * p), np.nan, dtype=np.float32)
    db = gpu.xp.full(o, np.nan, dtype=np.float32)
    gpu.act_backward_nchw(gpu.asarray(dy), gpu.asarray(want), act, dz, db)
    np.testing.assert_allclose(gpu.to_host(dz), want_dz, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu.to_host(db), want_db, rtol=1e-4, atol=1e-4 * np.sqrt(n * p))


@needs_gpu
@pytest.mark.parametrize("shape,kernel,stride,pad", WINDOWS)
def test_pooling(gpu, shape, kernel, stride, pad):
    pad = tuple(min(p_, k // 2) for p_, k in zip(pad, kernel))
    x = np.round(_randn(_rng(*shape, 1), shape, 2.0))  # ties: the first maximum wins
    out_shape = shape[:2] + _window_out(shape, kernel, stride, pad)
    want, want_arg = np.empty(out_shape, np.float32), np.empty(out_shape, np.int32)
    ref.max_pool(x, kernel, stride, pad, want, want_arg)
    out = gpu.xp.empty(out_shape, dtype=np.float32)
    arg = gpu.xp.empty(out_shape, dtype=np.int32)
    gpu.max_pool(gpu.asarray(x), kernel, stride, pad, out, arg)
    np.testing.assert_array_equal(gpu.to_host(out), want)
    np.testing.assert_array_equal(gpu.to_host(arg), want_arg)
    dy = _randn(_rng(3), out_shape)
    for name, args in (
        ("max_pool_backward", (want_arg, kernel, stride, pad)),
        ("avg_pool_backward", (kernel, stride, pad)),
    ):
        want_dx = np.empty(shape, np.float32)
        getattr(ref, name)(dy, *args, want_dx)
        dx = gpu.xp.full(shape, np.nan, dtype=np.float32)
        dev_args = tuple(gpu.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
        getattr(gpu, name)(gpu.asarray(dy), *dev_args, dx)
        np.testing.assert_allclose(gpu.to_host(dx), want_dx, rtol=1e-5, atol=1e-5)
    want_avg = np.empty(out_shape, np.float32)
    ref.avg_pool(x, kernel, stride, pad, want_avg)
    gpu.avg_pool(gpu.asarray(x), kernel, stride, pad, out)
    np.testing.assert_allclose(gpu.to_host(out), want_avg, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_image_layers_pass_check_layer_on_the_gpu():
    import horn
    from horn.layers import Conv2d, Dense, Flatten, MaxPool2d

    layer = Conv2d(4, 3, 1, 1, "relu")
    passed = horn.check_layer(layer, in_features=(2, 6, 5), backends=("numpy", "cupy"))
    assert "backend cupy" in passed
    for other in (MaxPool2d(2), Flatten(), Dense(3)):
        shape = 24 if isinstance(other, Dense) else (2, 6, 4)
        assert "backend cupy" in horn.check_layer(
            other, in_features=shape, backends=("numpy", "cupy")
        )


@needs_gpu
@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("n,block", [(1, 256), (1000, 64), (300_001, 256)])
def test_compress_bit_identical(gpu, codec, n, block):
    import cupy

    from horn.backends.base import message_size

    x, r = _codec_inputs(n)
    want, want_r = np.empty(message_size(codec, n, block), np.uint8), r.copy()
    ref.compress(codec, x, want_r, block, want)
    got, got_r = cupy.empty(want.size, cupy.uint8), cupy.asarray(r)
    gpu.compress(codec, cupy.asarray(x), got_r, block, got)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    np.testing.assert_array_equal(cupy.asnumpy(got_r), want_r)
    out, got_out = np.full(n, 0.5, np.float32), cupy.full(n, 0.5, cupy.float32)
    ref.decompress_add(codec, want, block, out)
    gpu.decompress_add(codec, got, block, got_out)
    np.testing.assert_array_equal(cupy.asnumpy(got_out), out)
