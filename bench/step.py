"""Cost of one training step of an MLP in horn vs plain numpy and PyTorch.

``python bench/step.py [--backend numba|numpy|cupy] [--reps N]`` times one step
(forward + softmax cross-entropy + backward + SGD momentum 0.9 update) of an
MLP 784-1024-1024-10 on a float32 batch of 256, at 1 and 2 threads, for:

* horn on the chosen backend (``Model.train_step`` + ``SGD.step``),
* a hand-written numpy step (same math, no gradient for the input layer),
* PyTorch (``nn.Sequential`` of Linear/ReLU, ``CrossEntropyLoss``,
  ``optim.SGD``); CUDA when horn runs on cupy and torch sees a GPU.

Every (peer, threads) pair runs in a fresh subprocess (``--worker``) that sets
the thread environment before numpy/numba/torch are imported: thread pools
cannot be resized reliably in-process once torch and numpy's OpenBLAS coexist.
The three workers of a thread count stay alive and take turns, one timed block
each, so load from other processes falls on every peer alike. All peers start
from the same weights and batch; their first losses must agree. Prints a table
of median ms/step and writes it to docs/step.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = (784, 1024, 1024, 10)
BATCH, LR, MOMENTUM, SEED = 256, 0.01, 0.9, 0
THREADS = (1, 2)
PEERS = ("horn", "numpy", "torch")
WARMUP, BLOCKS = 10, 7
REWARM = 2  # untimed steps before each block: the worker sat idle while the others ran
IDLE_GAP = 0.25  # seconds between blocks: OpenBLAS threads spin ~0.1 s after their last call
CHECKED_STEPS = 3  # the first losses every peer must agree on
LOSS_RTOL = 1e-3
NOISY = 1.25  # slowest / fastest block above this: the machine was not idle
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
TORCH_MISSING = "torch not installed: skipping the PyTorch peer (pip install torch==2.13.0)"


# ---- shared problem ----------------------------------------------------------
def problem():
    """He-initialised weights [(W (in, out), b (out,)), ...], a batch x and its labels."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    layers = [((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
               np.zeros(fan_out, np.float32)) for fan_in, fan_out in zip(SIZES, SIZES[1:])]
    x = rng.random((BATCH, SIZES[0]), dtype=np.float32)
    labels = rng.integers(0, SIZES[-1], BATCH)
    return layers, x, labels


# ---- peers: each returns (step, sync, device) ---------------------------------
def horn_peer(backend, threads):
    from horn.layers import Dense, SoftmaxCrossEntropy
    from horn.model import Model
    from horn.optim import SGD
    from horn.runner import configure_threads

    configure_threads(threads)
    layers, x, labels = problem()
    widths = SIZES[1:]
    model = Model([Dense(w, activation="relu") for w in widths[:-1]] + [Dense(widths[-1])],
                  SoftmaxCrossEntropy(), SIZES[0], backend=backend, seed=SEED)
    model.load_arrays({f"param/{i}.{name}": value for i, pair in enumerate(layers)
                       for name, value in zip("Wb", pair)})
    opt = SGD(model, momentum=MOMENTUM)
    xb, yb = model.backend.asarray(x), model.backend.asarray(labels)

    def step():
        loss = model.train_step(xb, yb)
        opt.step(LR)
        return loss

    return step, model.backend.synchronize, backend


def numpy_peer():
    import numpy as np

    layers, x, labels = problem()
    params = [a for pair in layers for a in pair]  # W1, b1, W2, b2, W3, b3
    velocity = [np.zeros_like(p) for p in params]
    rows = np.arange(BATCH)

    def step():
        w1, b1, w2, b2, w3, b3 = params
        h1 = np.maximum(x @ w1 + b1, 0)
        h2 = np.maximum(h1 @ w2 + b2, 0)
        z = h2 @ w3 + b3
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, labels]).mean()
        dz = p
        dz[rows, labels] -= 1
        dz /= BATCH
        dh2 = dz @ w3.T
        dh2[h2 <= 0] = 0
        dh1 = dh2 @ w2.T
        dh1[h1 <= 0] = 0
        grads = [x.T @ dh1, dh1.sum(axis=0), h1.T @ dh2, dh2.sum(axis=0), h2.T @ dz, dz.sum(axis=0)]
        for param, grad, vel in zip(params, grads, velocity):
            vel *= MOMENTUM
            vel += grad
            param -= LR * vel
        return float(loss)

    return step, lambda: None, "cpu"


def torch_peer(threads, want_cuda):
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if want_cuda and torch.cuda.is_available() else "cpu"
    layers, x, labels = problem()
    linears = [torch.nn.Linear(w.shape[0], w.shape[1]) for w, _ in layers]
    with torch.no_grad():
        for linear, (w, b) in zip(linears, layers):
            linear.weight.copy_(torch.from_numpy(w.T))
            linear.bias.copy_(torch.from_numpy(b))
    modules = [m for linear in linears[:-1] for m in (linear, torch.nn.ReLU())] + [linears[-1]]
    model = torch.nn.Sequential(*modules).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xb, yb = torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return step, sync, device


def make_peer(peer, threads, backend):
    if peer == "horn":
        return horn_peer(backend, threads)
    if peer == "numpy":
        return numpy_peer()
    return torch_peer(threads, want_cuda=backend == "cupy")


def worker(peer, threads, backend, reps):
    """Runs in a fresh process: pin the thread count, build and warm up one peer, print
    ``READY {losses, device}`` (``READY null`` when torch does not import), then time one
    block of ``reps`` steps per line read from stdin, answering ``BLOCK <seconds/step>``."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    import horn.backends.numba_backend  # noqa: F401  first: pins Numba's threading layer

    try:
        step, sync, device = make_peer(peer, threads, backend)
    except ImportError as exc:
        if peer != "torch":
            raise
        print(f"import torch failed: {exc}", file=sys.stderr)
        print("READY null", flush=True)
        return
    losses = [step() for _ in range(CHECKED_STEPS)]
    for _ in range(WARMUP - CHECKED_STEPS):
        step()
    sync()
    print("READY " + json.dumps({"losses": losses, "device": device}), flush=True)
    for _ in sys.stdin:
        for _ in range(REWARM):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        sync()
        print(f"BLOCK {(time.perf_counter() - t0) / reps!r}", flush=True)


# ---- driver ------------------------------------------------------------------
def expect(proc, tag, what):
    """The payload of the worker's next ``tag`` line; exits if the worker died first."""
    for line in proc.stdout:
        if line.startswith(tag + " "):
            return line[len(tag) + 1:]
    sys.exit(f"{what} worker failed (exit status {proc.wait()}); its stderr is above")


def start_worker(peer, threads, backend, reps):
    """A warmed-up worker process: {proc, what, losses, device, blocks}, or None (no torch)."""
    cmd = [sys.executable, __file__, "--worker", peer, "--threads", str(threads),
           "--backend", backend, "--reps", str(reps)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    what = f"{peer} at {threads} thread(s)"
    info = json.loads(expect(proc, "READY", what))
    if info is None:
        proc.wait()
        return None
    return {"proc": proc, "what": what, "blocks": [], **info}


def run_block(worker):
    """Let the previous worker's spinning BLAS/OpenMP threads sleep, then time one block."""
    time.sleep(IDLE_GAP)
    worker["proc"].stdin.write("block\n")
    worker["proc"].stdin.flush()
    worker["blocks"].append(float(expect(worker["proc"], "BLOCK", worker["what"])))


def measure(threads, peers, backend, reps):
    """{peer: result} at ``threads``: blocks interleaved across the live workers (rotating
    order), so load from other processes falls on every peer alike."""
    workers = {peer: start_worker(peer, threads, backend, reps) for peer in peers}
    live = [peer for peer, w in workers.items() if w is not None]
    for block in range(BLOCKS):
        for peer in live[block % len(live):] + live[:block % len(live)]:
            run_block(workers[peer])
    for peer in live:
        workers[peer]["proc"].stdin.close()
        workers[peer]["proc"].wait()
        report(workers[peer])
    return workers


def report(result):
    result["ms"] = 1e3 * statistics.median(result["blocks"])
    blocks = " ".join(f"{1e3 * b:.2f}" for b in result["blocks"])
    print(f"  {result['what']} on {result['device']}: median {result['ms']:.2f} ms/step "
          f"(blocks: {blocks})", flush=True)
    if max(result["blocks"]) > NOISY * min(result["blocks"]):
        print(f"  warning: blocks differ by more than {NOISY - 1:.0%}: is something else using "
              "the CPU? (top -bn1)", flush=True)


def check_same_math(results):
    """Every peer's first losses must agree: they start from the same weights and batch."""
    reference = results["numpy"]["losses"]
    for peer, result in results.items():
        for step, (got, want) in enumerate(zip(result["losses"], reference)):
            if abs(got - want) > LOSS_RTOL * abs(want):
                sys.exit(f"{peer} loss at step {step} is {got:.6f}, numpy's {want:.6f}: "
                         "the peers do not compute the same step")


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b is not None else "n/a"


def ms(value):
    return f"{value:.2f}" if value is not None else "n/a"


def table(rows):
    """Markdown table of {threads, horn, numpy, torch} (ms/step, torch may be None)."""
    lines = ["| threads | horn ms | numpy ms | torch ms | horn/torch | horn/numpy |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {ms(r['horn'])} | {ms(r['numpy'])} | {ms(r['torch'])} "
                     f"| {ratio(r['horn'], r['torch'])} | {ratio(r['horn'], r['numpy'])} |")
    return "\n".join(lines)


def target_line(rows):
    if any(r["torch"] is None for r in rows):
        return "target: horn <= 1.0x PyTorch at both thread counts: not measured (no torch)"
    met = all(r["horn"] <= r["torch"] for r in rows)
    return f"target: horn <= 1.0x PyTorch at both thread counts: {'MET' if met else 'MISSED'}"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else 'unknown CPU'} ({os.cpu_count()} logical CPUs)"


def write_doc(text, target, backend, reps, torch_device):
    versions = f"numpy {metadata.version('numpy')}, numba {metadata.version('numba')}, " + (
        f"torch {metadata.version('torch')} on {torch_device}" if torch_device else "no torch")
    note = (f"Measured {date.today().isoformat()} by `python bench/step.py --backend {backend} "
            f"--reps {reps}` on {cpu_model()}; {versions}.\n\n"
            f"One step = forward + softmax cross-entropy + backward + SGD (momentum {MOMENTUM}) "
            f"update of an MLP {'-'.join(map(str, SIZES))} (ReLU), float32, batch {BATCH}. "
            "Each (peer, threads) pair runs in a fresh process with OMP/OPENBLAS/MKL/NUMBA "
            f"thread variables set before import; {WARMUP} warm-up steps, then the median over "
            f"{BLOCKS} blocks of {reps} steps, the peers taking turns block by block (rotating "
            f"order, {IDLE_GAP} s apart, {REWARM} untimed steps before each block). All peers "
            "start from the same weights and batch "
            f"and their first {CHECKED_STEPS} losses agree to {LOSS_RTOL:g} relative.\n\n"
            f"horn = `Model.train_step` + `SGD.step` on the {backend} backend; numpy = a "
            "hand-written step (`@`, `np.maximum`, max-shifted softmax, in-place momentum, no "
            "input-layer gradient); torch = `nn.Sequential(Linear, ReLU, ...)`, "
            "`CrossEntropyLoss`, `optim.SGD`, `torch.set_num_threads(n)`.\n")
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "step.md").write_text(
        "# Training step cost: horn vs numpy vs PyTorch\n\n" + note + "\n" + text + "\n\n"
        + target + "\n")


def gpu_missing(backend):
    """Why the chosen backend cannot run here, or None."""
    if backend != "cupy":
        return None
    from horn.backends import available_backends

    if "cupy" in available_backends():
        return None
    return "backend cupy needs CuPy and a CUDA GPU; none found here: nothing measured"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba", choices=("numba", "numpy", "cupy"))
    parser.add_argument("--reps", type=int, default=30, help="steps per timed block (default 30)")
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.backend, args.reps)
        return
    reason = gpu_missing(args.backend)
    if reason:
        print(reason)
        return
    peers, rows, torch_device = list(PEERS), [], None
    for threads in THREADS:
        results = measure(threads, peers, args.backend, args.reps)
        if "torch" in results and results["torch"] is None:
            print(TORCH_MISSING)
            peers.remove("torch")
            del results["torch"]
        check_same_math(results)
        if "torch" in results:
            torch_device = results["torch"]["device"]
        rows.append({"threads": threads, **{p: results[p]["ms"] if p in results else None
                                            for p in PEERS}})
    text, target = table(rows), target_line(rows)
    print(text)
    print(target)
    write_doc(text, target, args.backend, args.reps, torch_device)


if __name__ == "__main__":
    main()
