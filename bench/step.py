"""Cost of one training step in horn vs plain numpy and PyTorch: an MLP and a CNN.

``python bench/step.py [--net mlp|cnn|all] [--backend numba|numpy|cupy] [--reps N]``
times one step (forward + softmax cross-entropy + backward + SGD momentum 0.9
update) at 1 and 2 threads of

* ``mlp``: MLP 784-1024-1024-10 (ReLU) on a float32 batch of 256 (docs/step.md);
* ``cnn``: conv(1->32, 3x3, pad 1)-ReLU-maxpool 2-conv(32->64, 3x3, pad 1)-ReLU-
  maxpool 2-dense(3136->128)-ReLU-dense(10) on a batch of 128 1x28x28 images
  (docs/cnn.md),

for these peers:

* horn on the chosen backend (``Model.train_step`` + ``SGD.step``),
* a hand-written numpy step (MLP only: same math, no gradient for the input layer),
* PyTorch (``nn.Sequential`` of Conv2d/MaxPool2d/Linear/ReLU, ``CrossEntropyLoss``,
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
LR, MOMENTUM, SEED = 0.01, 0.9, 0
BATCH = {"mlp": 256, "cnn": 128}
CNN_CHANNELS = (1, 32, 64)  # conv 3x3 pad 1 + ReLU + maxpool 2, twice, on 28x28 images
CNN_DENSE = (64 * 7 * 7, 128, 10)
THREADS = (1, 2)
PEERS = ("horn", "numpy", "torch")
NET_PEERS = {"mlp": PEERS, "cnn": ("horn", "torch")}
DOCS = {"mlp": "step.md", "cnn": "cnn.md"}
BENCH_START, BENCH_END = "<!-- bench/step.py --net cnn -->", "<!-- end bench/step.py -->"
WARMUP, BLOCKS = 10, 7
REWARM = 2  # untimed steps before each block: the worker sat idle while the others ran
IDLE_GAP = 0.25  # seconds between blocks: OpenBLAS threads spin ~0.1 s after their last call
CHECKED_STEPS = 3  # the first losses every peer must agree on
LOSS_RTOL = 1e-3
NOISY = 1.25  # slowest / fastest block above this: the machine was not idle
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
TORCH_MISSING = "torch not installed: skipping the PyTorch peer (pip install torch==2.13.0)"


# ---- shared problem ----------------------------------------------------------
def problem(net):
    """He-initialised parameters, a batch x (flat rows) and its labels: for the MLP
    [(W (in, out), b), ...]; for the CNN [(W (O, C, 3, 3), b), (W, b), (W (in, out), b),
    (W, b)], the conv weights in PyTorch's layout."""
    import numpy as np

    rng = np.random.default_rng(SEED)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    if net == "mlp":
        layers = [(he((i, o), i), np.zeros(o, np.float32)) for i, o in zip(SIZES, SIZES[1:])]
        width, classes = SIZES[0], SIZES[-1]
    else:
        layers = [
            (he((o, i, 3, 3), 9 * i), np.zeros(o, np.float32))
            for i, o in zip(CNN_CHANNELS, CNN_CHANNELS[1:])
        ]
        layers += [
            (he((i, o), i), np.zeros(o, np.float32)) for i, o in zip(CNN_DENSE, CNN_DENSE[1:])
        ]
        width, classes = 28 * 28, CNN_DENSE[-1]
    x = rng.random((BATCH[net], width), dtype=np.float32)
    labels = rng.integers(0, classes, BATCH[net])
    return layers, x, labels


# ---- peers: each returns (step, sync, device) ---------------------------------
def horn_layers(net):
    from horn.layers import Conv2d, Dense, Flatten, MaxPool2d

    if net == "mlp":
        widths = SIZES[1:]
        return [Dense(w, activation="relu") for w in widths[:-1]] + [Dense(widths[-1])], SIZES[0]
    convs = [
        m
        for c in CNN_CHANNELS[1:]
        for m in (Conv2d(c, kernel=3, padding=1, activation="relu"), MaxPool2d(2))
    ]
    return convs + [Flatten(), Dense(CNN_DENSE[1], activation="relu"), Dense(CNN_DENSE[2])], (
        1,
        28,
        28,
    )


def horn_peer(net, backend, threads):
    from horn.layers import SoftmaxCrossEntropy
    from horn.model import Model
    from horn.optim import SGD
    from horn.runner import configure_threads

    configure_threads(threads)
    layers, x, labels = problem(net)
    modules, inputs = horn_layers(net)
    model = Model(modules, SoftmaxCrossEntropy(), inputs, backend=backend, seed=SEED)
    with_params = [i for i, m in enumerate(modules) if m.params]
    model.load_arrays(
        {
            f"param/{i}.{name}": value
            for i, pair in zip(with_params, layers)
            for name, value in zip("Wb", pair)
        }
    )
    opt = SGD(model, momentum=MOMENTUM)
    xb, yb = model.backend.asarray(x), model.backend.asarray(labels)

    def step():
        loss = model.train_step(xb, yb)
        opt.step(LR)
        return loss

    return step, model.backend.synchronize, backend


def numpy_peer():
    import numpy as np

    layers, x, labels = problem("mlp")
    params = [a for pair in layers for a in pair]  # W1, b1, W2, b2, W3, b3
    velocity = [np.zeros_like(p) for p in params]
    batch = BATCH["mlp"]
    rows = np.arange(batch)

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
        dz /= batch
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


def torch_modules(net, layers):
    """``nn.Sequential`` of the net holding ``layers``' weights."""
    import torch

    nn = torch.nn
    if net == "mlp":
        linears, convs = [nn.Linear(w.shape[0], w.shape[1]) for w, _ in layers], []
    else:
        convs = [nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1) for w, _ in layers[:2]]
        linears = [nn.Linear(w.shape[0], w.shape[1]) for w, _ in layers[2:]]
    with torch.no_grad():
        for i, (module, (w, b)) in enumerate(zip(convs + linears, layers)):
            module.weight.copy_(torch.from_numpy(w if i < len(convs) else w.T))
            module.bias.copy_(torch.from_numpy(b))
    modules = [m for conv in convs for m in (conv, nn.ReLU(), nn.MaxPool2d(2))]
    modules += [nn.Flatten()] if convs else []
    modules += [m for linear in linears[:-1] for m in (linear, nn.ReLU())] + [linears[-1]]
    return nn.Sequential(*modules)


def torch_peer(net, threads, want_cuda):
    import torch

    torch.set_num_threads(threads)
    device = "cuda" if want_cuda and torch.cuda.is_available() else "cpu"
    layers, x, labels = problem(net)
    model = torch_modules(net, layers).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xb = torch.from_numpy(x if net == "mlp" else x.reshape(-1, 1, 28, 28)).to(device)
    yb = torch.from_numpy(labels).to(device)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return step, sync, device


def make_peer(peer, threads, backend, net):
    if peer == "horn":
        return horn_peer(net, backend, threads)
    if peer == "numpy":
        return numpy_peer()
    return torch_peer(net, threads, want_cuda=backend == "cupy")


def worker(peer, threads, backend, reps, net):
    """Runs in a fresh process: pin the thread count, build and warm up one peer, print
    ``READY {losses, device}`` (``READY null`` when torch does not import), then time one
    block of ``reps`` steps per line read from stdin, answering ``BLOCK <seconds/step>``."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    import horn.backends.numba_backend  # noqa: F401  first: pins Numba's threading layer

    try:
        step, sync, device = make_peer(peer, threads, backend, net)
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
            return line[len(tag) + 1 :]
    sys.exit(f"{what} worker failed (exit status {proc.wait()}); its stderr is above")


def start_worker(peer, threads, backend, reps, net):
    """A warmed-up worker process: {proc, what, losses, device, blocks}, or None (no torch)."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        peer,
        "--threads",
        str(threads),
        "--backend",
        backend,
        "--reps",
        str(reps),
        "--net",
        net,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    what = f"{net} {peer} at {threads} thread(s)"
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


def measure(threads, peers, backend, reps, net):
    """{peer: result} at ``threads``: blocks interleaved across the live workers (rotating
    order), so load from other processes falls on every peer alike."""
    workers = {peer: start_worker(peer, threads, backend, reps, net) for peer in peers}
    live = [peer for peer, w in workers.items() if w is not None]
    for block in range(BLOCKS):
        for peer in live[block % len(live) :] + live[: block % len(live)]:
            run_block(workers[peer])
    for peer in live:
        workers[peer]["proc"].stdin.close()
        workers[peer]["proc"].wait()
        report(workers[peer])
    return workers


def report(result):
    result["ms"] = 1e3 * statistics.median(result["blocks"])
    blocks = " ".join(f"{1e3 * b:.2f}" for b in result["blocks"])
    print(
        f"  {result['what']} on {result['device']}: median {result['ms']:.2f} ms/step "
        f"(blocks: {blocks})",
        flush=True,
    )
    if max(result["blocks"]) > NOISY * min(result["blocks"]):
        print(
            f"  warning: blocks differ by more than {NOISY - 1:.0%}: is something else using "
            "the CPU? (top -bn1)",
            flush=True,
        )


def check_same_math(results):
    """Every peer's first losses must agree: they start from the same weights and batch
    (the reference is numpy's step, or PyTorch's for the CNN)."""
    name = next((p for p in ("numpy", "torch") if p in results), None)
    if name is None:
        return
    reference = results[name]["losses"]
    for peer, result in results.items():
        for step, (got, want) in enumerate(zip(result["losses"], reference)):
            if abs(got - want) > LOSS_RTOL * abs(want):
                sys.exit(
                    f"{peer} loss at step {step} is {got:.6f}, {name}'s {want:.6f}: "
                    "the peers do not compute the same step"
                )


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b is not None else "n/a"


def ms(value):
    return f"{value:.2f}" if value is not None else "n/a"


def table(rows):
    """Markdown table of {threads, horn, numpy, torch} (ms/step, torch may be None)."""
    lines = [
        "| threads | horn ms | numpy ms | torch ms | horn/torch | horn/numpy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {ms(r['horn'])} | {ms(r['numpy'])} | {ms(r['torch'])} "
            f"| {ratio(r['horn'], r['torch'])} | {ratio(r['horn'], r['numpy'])} |"
        )
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


NET_TEXT = {
    "mlp": f"an MLP {'-'.join(map(str, SIZES))} (ReLU), float32, batch {BATCH['mlp']}",
    "cnn": "the CNN conv(1->32, 3x3, pad 1)-ReLU-maxpool 2-conv(32->64, 3x3, pad 1)-ReLU-"
    f"maxpool 2-dense(3136->128)-ReLU-dense(10), float32, batch {BATCH['cnn']}",
}
PEER_TEXT = {
    "mlp": "numpy = a hand-written step (`@`, `np.maximum`, max-shifted softmax, in-place "
    "momentum, no input-layer gradient); torch = `nn.Sequential(Linear, ReLU, ...)`",
    "cnn": "no numpy peer; torch = `nn.Sequential(Conv2d, ReLU, MaxPool2d, ..., Flatten, "
    "Linear, ReLU, Linear)`",
}


def write_doc(net, text, target, backend, reps, torch_device, load):
    versions = f"numpy {metadata.version('numpy')}, numba {metadata.version('numba')}, " + (
        f"torch {metadata.version('torch')} on {torch_device}" if torch_device else "no torch"
    )
    note = (
        f"Measured {date.today().isoformat()} by `python bench/step.py --net {net} "
        f"--backend {backend} --reps {reps}` on {cpu_model()}; {versions}; load average "
        f"{load[0]:.2f} before and {load[1]:.2f} after the run.\n\n"
        f"One step = forward + softmax cross-entropy + backward + SGD (momentum {MOMENTUM}) "
        f"update of {NET_TEXT[net]}. "
        "Each (peer, threads) pair runs in a fresh process with OMP/OPENBLAS/MKL/NUMBA "
        f"thread variables set before import; {WARMUP} warm-up steps, then the median over "
        f"{BLOCKS} blocks of {reps} steps, the peers taking turns block by block (rotating "
        f"order, {IDLE_GAP} s apart, {REWARM} untimed steps before each block). All peers "
        "start from the same weights and batch "
        f"and their first {CHECKED_STEPS} losses agree to {LOSS_RTOL:g} relative.\n\n"
        f"horn = `Model.train_step` + `SGD.step` on the {backend} backend; "
        f"{PEER_TEXT[net]}, `CrossEntropyLoss`, `optim.SGD`, `torch.set_num_threads(n)`.\n"
    )
    (REPO / "docs").mkdir(exist_ok=True)
    title = {"mlp": "an MLP", "cnn": "a CNN"}[net]
    path = REPO / "docs" / DOCS[net]
    section = note + "\n" + text + "\n\n" + target + "\n"
    old = path.read_text() if path.exists() else ""
    if BENCH_START in old and BENCH_END in old:  # docs/cnn.md holds more: replace this part
        start, end = old.index(BENCH_START), old.index(BENCH_END)
        path.write_text(old[:start] + BENCH_START + "\n" + section + old[end:])
    else:
        path.write_text(f"# Training step cost of {title}: horn vs PyTorch\n\n" + section)


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
    parser.add_argument("--net", default="all", choices=("mlp", "cnn", "all"))
    parser.add_argument("--backend", default="numba", choices=("numba", "numpy", "cupy"))
    parser.add_argument(
        "--reps", type=int, help="steps per timed block (default: 30 for the MLP, 10 for the CNN)"
    )
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.backend, args.reps, args.net)
        return
    reason = gpu_missing(args.backend)
    if reason:
        print(reason)
        return
    for net in ("mlp", "cnn") if args.net == "all" else (args.net,):
        bench_net(net, args.backend, args.reps or {"mlp": 30, "cnn": 10}[net])


def bench_net(net, backend, reps):
    """Both thread counts of one net, printed and written to its page under docs/."""
    load = [os.getloadavg()[0]]
    peers, rows, torch_device = list(NET_PEERS[net]), [], None
    for threads in THREADS:
        results = measure(threads, peers, backend, reps, net)
        if "torch" in results and results["torch"] is None:
            print(TORCH_MISSING)
            peers.remove("torch")
            del results["torch"]
        check_same_math(results)
        if "torch" in results:
            torch_device = results["torch"]["device"]
        rows.append(
            {"threads": threads, **{p: results[p]["ms"] if p in results else None for p in PEERS}}
        )
    load.append(os.getloadavg()[0])
    text, target = table(rows), target_line(rows)
    print(text)
    print(target)
    write_doc(net, text, target, backend, reps, torch_device, load)


if __name__ == "__main__":
    main()
