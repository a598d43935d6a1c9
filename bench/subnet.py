"""Sub-network groups (HORN-27): compute, assembly and bytes of IST vs model averaging.

``python bench/subnet.py [--backend numba|numpy] [--race|--race-from DIR...]``
``python bench/subnet.py --net cnn [--backend numba|numpy]``

Parent MLP 784-4096-4096-10, batch 256, W = 2 and 4 workers per group, the
balanced partition and the scale folded into the weights (``parallel.subnet.scale_at =
"weights"``, no per-step cost):

(a) one worker's step (compact sub-network: forward + backward + SGD momentum)
    vs the parent's step, next to the ideal FLOP fraction (target: within 1.2x);
(b) gather + scatter per round as a share of a round of local_steps = 20
    (target: < 10%);
(c) bytes per rank per round, IST (ring Allgatherv of the compact blocks) vs
    model averaging of the parent on the same W ranks (ring Allreduce): from the
    documented formulas and measured by running the Peer collectives under
    mpirun with W ranks (``peer.bytes_sent_total``) (target: >= W x fewer);
(d) with ``--race`` (runs three trainings under mpirun, tens of minutes) or
    ``--race-from SUBNET_RUN MA_RUN...``: bytes, FLOPs and wall time per worker to first reach
    0.88 validation accuracy, sub-networks vs model averaging of the same parent
    on the same ranks (the parent of jobs/fashion_subnet.toml, 784-2048-2048-10:
    4096 is too slow to train twice on 2 cores).

Timings (a)/(b) are medians over interleaved blocks, so that a load burst hits
every variant alike; the 1-minute load average is printed with them. Writes
docs/subnet.md.

``--net cnn``: (a) only, for channel-partitioned sub-networks of the parent of
jobs/fashion_cnn_subnet.toml (convs 32-64, dense 256, batch 128) at 1 thread: a
worker's compact CNN step / the parent's step vs the ideal fraction of matmul FLOPs
(target: within 1.2x). Prints a table (docs/cnn.md quotes it).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import horn  # noqa: E402  (before numba: horn pins Numba's threading layer)

try:
    import horn.backends.numba_backend  # noqa: E402,F401
except ImportError:
    pass
import numpy as np  # noqa: E402

SIZES = (784, 4096, 4096, 10)
BATCH, LR, MOMENTUM, SEED = 256, 0.01, 0.9, 0
WORKERS = (2, 4)
THREADS = (1, 2)
LOCAL_STEPS = 20
WARMUP, BLOCKS, REPS = 3, 9, 4
NOISY = 1.3  # slowest / fastest block above this: the machine was not idle
TARGET_VAL = 0.88
RACE_JOB = REPO / "jobs" / "fashion_subnet.toml"
# model averaging of the same parent: every rank a group of one (a quarter of the data,
# 105 steps an epoch); its own shorter cosine schedule, since a full-parent step costs ~9x
# a W=4 worker's and it needs fewer passes. local_steps divides the epoch, so that the
# per-epoch evaluation finds the replicas averaged and costs no extra Allreduce.
RACE_MA = {
    local: (
        "parallel.groups=4",
        "parallel.workers=1",
        "train.epochs=10",
        f"parallel.local_steps={local}",
    )
    for local in (105, 21)
}


# ---- models ------------------------------------------------------------------
def parent_spec(sizes=None):
    sizes = sizes or SIZES
    layers = [{"type": "dense", "units": n, "activation": "relu"} for n in sizes[1:-1]]
    layers.append({"type": "dense", "units": sizes[-1]})
    return {"in_features": sizes[0], "layers": layers, "loss": {"type": "softmax_cross_entropy"}}


def step_flops(widths, batch=BATCH):
    """Matmul FLOPs of one training step: forward, weight gradients, and input
    gradients for every layer but the first (elementwise passes are not counted)."""
    pairs = list(zip(widths, widths[1:]))
    macs = sum(a * b for a, b in pairs)
    return 2 * batch * (2 * macs + sum(a * b for a, b in pairs[1:]))


def plans(parent, workers, seed=SEED):
    from horn.partition import partition
    from horn.subnet import SubnetLayout

    layout = SubnetLayout(parent, scale="inverse", scale_at="weights")
    rng = np.random.default_rng(seed)
    parts = [partition(n, workers, "balanced", rng) for n in layout.sizes]
    return layout, [layout.plan(parts, w) for w in range(workers)]


def compact_widths(workers, sizes=None):
    sizes = sizes or SIZES
    return [sizes[0]] + [n // workers for n in sizes[1:-1]] + [sizes[-1]]


# ---- (a) and (b): step, gather and scatter times ---------------------------------
def trainer(model, batch=BATCH):
    from horn.optim import SGD

    opt = SGD(model, momentum=MOMENTUM)
    rng = np.random.default_rng(SEED)
    x = model.backend.asarray(rng.random((batch, model.input_size), dtype=np.float32))
    y = model.backend.asarray(rng.integers(0, model.out_features, batch))

    def step():
        model.train_step(x, y)
        opt.step(LR)

    return step


def timed(fn, reps, sync, setup=None, clock=time.perf_counter):
    """Seconds per call of ``fn``; ``setup`` (untimed) runs before each call when given."""
    if setup is None:
        t0 = clock()
        for _ in range(reps):
            fn()
        sync()
        return (clock() - t0) / reps
    total = 0.0
    for _ in range(reps):
        setup()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        total += time.perf_counter() - t0
    return total / reps


def compute_rows(backend_name):
    """Per thread count: parent and compact step times, gather and scatter times."""
    from horn.backends import get_backend
    from horn.model import Model
    from horn.runner import configure_threads
    from horn.subnet import gather, scatter

    backend = get_backend(backend_name)
    parent = Model.from_spec(parent_spec(), backend, seed=SEED)
    parent_state = backend.xp.zeros_like(parent.params)
    variants = {"parent": trainer(parent)}
    round_ops = {}
    for w in WORKERS:
        layout, ps = plans(parent, w)
        compact = Model.from_spec(ps[0].spec, backend, initialize_params=False)
        gather(backend, layout, ps[0], parent.params, compact.params)
        variants[f"W{w}"] = trainer(compact)
        pristine = [backend.xp.empty(p.size, dtype=parent.dtype) for p in ps]
        for p, block in zip(ps, pristine):
            gather(backend, layout, p, parent.params, block)
        scratch = [b.copy() for b in pristine]

        def gather_one(layout=layout, ps=ps, compact=compact):
            gather(backend, layout, ps[0], parent.params, compact.params)

        def scatter_all(layout=layout, ps=ps, scratch=scratch):
            # every rank scatters all W blocks of the group into its parent (the state
            # buffer stands in for it, so the parent's weights stay put)
            scatter(backend, layout, ps, scratch, parent_state)

        def refresh(scratch=scratch, pristine=pristine):
            # scatter divides the folded scale out of its (scratch) blocks in place
            for a, b in zip(scratch, pristine):
                a[...] = b

        round_ops[f"W{w}"] = (gather_one, scatter_all, refresh)
    rows = []
    for threads in THREADS:
        configure_threads(threads)
        for fn in list(variants.values()) + [f for ops in round_ops.values() for f in ops]:
            for _ in range(WARMUP):
                fn()
        samples = {name: [] for name in variants}
        samples.update({f"{k}.{op}": [] for k in round_ops for op in ("gather", "scatter")})
        for block in range(BLOCKS):
            names = list(variants)
            for name in names[block % len(names) :] + names[: block % len(names)]:
                samples[name].append(timed(variants[name], REPS, backend.synchronize))
            for key, (g, s, refresh) in round_ops.items():
                samples[f"{key}.gather"].append(timed(g, 5, backend.synchronize))
                samples[f"{key}.scatter"].append(timed(s, 5, backend.synchronize, refresh))
        med = {k: float(np.median(v)) for k, v in samples.items()}
        spread = max(max(v) / min(v) for k, v in samples.items() if k in variants)
        for w in WORKERS:
            ideal = step_flops(compact_widths(w)) / step_flops(SIZES)
            # paired: the worker's and the parent's blocks ran back to back
            measured = float(np.median(np.array(samples[f"W{w}"]) / np.array(samples["parent"])))
            g, s = med[f"W{w}.gather"], med[f"W{w}.scatter"]
            round_s = LOCAL_STEPS * med[f"W{w}"] + g + s
            rows.append(
                {
                    "threads": threads,
                    "workers": w,
                    "parent_ms": med["parent"] * 1e3,
                    "worker_ms": med[f"W{w}"] * 1e3,
                    "measured": measured,
                    "ideal": ideal,
                    "vs_ideal": measured / ideal,
                    "gather_ms": g * 1e3,
                    "scatter_ms": s * 1e3,
                    "round_ms": round_s * 1e3,
                    "share": (g + s) / round_s,
                    "spread": spread,
                }
            )
    return rows


# ---- --net cnn: channel-partitioned sub-networks ------------------------------------
CNN_JOB, CNN_BATCH = REPO / "jobs" / "fashion_cnn_subnet.toml", 128
CPU_CLOCK = time.process_time


def cnn_step_flops(model, batch=CNN_BATCH):
    """Matmul FLOPs of one step of a CNN: per split layer (conv2d, dense) weights x output
    positions, forward and weight gradient, plus the input gradient but for the first."""
    macs = [
        int(np.prod(layer.params["W"].shape)) * int(np.prod(getattr(layer, "out_hw", (1,))))
        for layer in model.layers
        if layer.partition_role == "split"
    ]
    return 2 * batch * (2 * sum(macs) + sum(macs[1:]))


def cnn_matmuls(model, batch=CNN_BATCH):
    """One step's matmuls alone (:func:`cnn_matmul_calls`), as a function."""
    calls = cnn_matmul_calls(model, batch)

    def step():
        for a, b, out in calls:
            np.matmul(a, b, out=out)

    return step


def cnn_matmul_calls(model, batch=CNN_BATCH):
    """(a, b, out) of one step's matmuls, on the shapes and orientations the layers use (conv2d:
    W @ cols, dz @ cols.T; dense: x @ W, x.T @ dy; and the input gradient, W.T @ dz or
    dy @ W.T, but for the first layer): what is left of a step for any other kernel to win back."""
    rng = np.random.default_rng(SEED)
    calls = []
    split = [layer for layer in model.layers if layer.partition_role == "split"]
    for k, layer in enumerate(split):
        o = layer.params["W"].shape[0] if hasattr(layer, "out_hw") else None
        if o is not None:  # conv2d: (O, C*KH*KW) @ (C*KH*KW, N*OH*OW)
            w = rng.random((o, layer.params["W"].size // o), dtype=np.float32)
            cols = rng.random((w.shape[1], batch * int(np.prod(layer.out_hw))), np.float32)
            dz = rng.random((o, cols.shape[1]), dtype=np.float32)
            calls += [(w, cols, np.empty_like(dz)), (dz, cols.T, np.empty_like(w))]
            if k:
                calls.append((w.T, dz, np.empty_like(cols)))
        else:  # dense: (N, in) @ (in, out)
            w = rng.random(layer.params["W"].shape, dtype=np.float32)
            x = rng.random((batch, w.shape[0]), dtype=np.float32)
            dy = rng.random((batch, w.shape[1]), dtype=np.float32)
            calls += [(x, w, np.empty_like(dy)), (x.T, dy, np.empty_like(w))]
            if k:
                calls.append((dy, w.T, np.empty_like(x)))
    return calls


def cnn_rows(backend_name):
    """Parent and compact CNN steps at 1 thread, interleaved blocks, per worker count."""
    import tomllib

    from horn.backends import get_backend
    from horn.model import Model
    from horn.runner import configure_threads
    from horn.subnet import gather

    with open(CNN_JOB, "rb") as f:
        layers = tomllib.load(f)["model"]["layers"]
    spec = {"in_features": [1, 28, 28], "layers": layers, "loss": {"type": "softmax_cross_entropy"}}
    backend = get_backend(backend_name)
    parent = Model.from_spec(spec, backend, seed=SEED)
    variants = {"parent": trainer(parent, CNN_BATCH), "parent mm": cnn_matmuls(parent)}
    ideal = {}
    for w in WORKERS:
        layout, ps = plans(parent, w)
        compact = Model.from_spec(ps[0].spec, backend, initialize_params=False)
        gather(backend, layout, ps[0], parent.params, compact.params)
        variants[f"W{w}"] = trainer(compact, CNN_BATCH)
        variants[f"W{w} mm"] = cnn_matmuls(compact)
        ideal[w] = cnn_step_flops(compact) / cnn_step_flops(parent)
    configure_threads(1)
    for fn in variants.values():
        for _ in range(WARMUP):
            fn()
    samples = {name: [] for name in variants}
    for block in range(BLOCKS):
        names = list(variants)
        for name in names[block % len(names) :] + names[: block % len(names)]:
            # CPU time of this (1-thread) process: what a step costs, not how long a loaded
            # machine's scheduler kept it waiting
            samples[name].append(timed(variants[name], 2, backend.synchronize, clock=CPU_CLOCK))

    def ratio(a, b):
        return float(np.median(np.array(samples[a]) / np.array(samples[b])))

    rows = []
    for w in WORKERS:
        measured = ratio(f"W{w}", "parent")
        rows.append(
            {
                "workers": w,
                "parent_ms": float(np.median(samples["parent"])) * 1e3,
                "worker_ms": float(np.median(samples[f"W{w}"])) * 1e3,
                "measured": measured,
                "ideal": ideal[w],
                "vs_ideal": measured / ideal[w],
                "parent_mm_ms": float(np.median(samples["parent mm"])) * 1e3,
                "worker_mm_ms": float(np.median(samples[f"W{w} mm"])) * 1e3,
                "mm_vs_ideal": ratio(f"W{w} mm", "parent mm") / ideal[w],
            }
        )
    return rows


def cnn_table(rows, backend, load):
    out = [
        f"Channel-partitioned sub-networks of `jobs/fashion_cnn_subnet.toml`'s parent, batch "
        f"{CNN_BATCH}, 1 thread, backend {backend}, balanced partition, scale folded into "
        f"the weights; process CPU time, medians of {BLOCKS} interleaved blocks; {load}.\n",
        "| W | parent step | worker step | worker / parent | ideal FLOP fraction | "
        "vs ideal (target <= 1.2x) | matmuls alone: parent, worker | matmuls alone vs ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['workers']} | {r['parent_ms']:.1f} ms | {r['worker_ms']:.1f} ms | "
            f"{r['measured']:.3f} | {r['ideal']:.3f} | **{r['vs_ideal']:.2f}x** | "
            f"{r['parent_mm_ms']:.1f} ms, {r['worker_mm_ms']:.1f} ms | {r['mm_vs_ideal']:.2f}x |"
        )
    return "\n".join(out)


# ---- (c): bytes per round under mpirun -------------------------------------------
def formula_bytes(workers):
    """The documented per-rank, per-round bytes: IST 4 (W-1) |theta_w| (ring
    Allgatherv), model averaging 4 * 2 (W-1)/W * P (ring Allreduce)."""
    from horn.model import spec_layout

    _, total = spec_layout(parent_spec())
    widths = compact_widths(workers)
    theta = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return 4 * (workers - 1) * theta, int(4 * 2 * (workers - 1) * total / workers), theta, total


def bytes_worker(backend_name):
    """One rank of ``mpirun -n W``: the IST assembly's Allgatherv and the parent's
    Allreduce-mean, as SubnetSync and AverageSync run them; bytes and times."""
    from mpi4py import MPI

    from horn.backends import get_backend
    from horn.bsp import Peer
    from horn.model import Model
    from horn.runner import configure_threads

    world = MPI.COMM_WORLD
    w = world.size
    configure_threads(1)
    backend = get_backend(backend_name)
    ist = Peer.create(world, groups=1, workers=w)
    ma = Peer.create(world, groups=w, workers=1)
    parent = Model.from_spec(parent_spec(), backend, seed=SEED)
    _, ps = plans(parent, w)
    counts = [p.size for p in ps]
    block = backend.xp.ones(counts[world.rank], dtype=parent.dtype)
    recv = backend.xp.empty(sum(counts), dtype=parent.dtype)
    times = {"ist": [], "ma": []}
    sent = {}
    for name, peer, op in (
        ("ist", ist, lambda: ist.allgatherv(block, recv, counts, "group")),
        ("ma", ma, lambda: ma.allreduce_mean(parent.params, "world")),
    ):
        op()  # warm-up
        before = peer.bytes_sent_total
        for _ in range(REPS * 3):
            world.Barrier()
            t0 = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - t0)
        sent[name] = (peer.bytes_sent_total - before) // (REPS * 3)
    per_rank = world.gather(
        {
            "rank": world.rank,
            "ist_bytes": sent["ist"],
            "ma_bytes": sent["ma"],
            "ist_ms": 1e3 * float(np.median(times["ist"])),
            "ma_ms": 1e3 * float(np.median(times["ma"])),
        },
        root=0,
    )
    if world.rank == 0:
        print("BENCH " + json.dumps(per_rank), flush=True)
    ist.close()
    ma.close()


def mpirun_python(ranks, args, timeout=1800):
    mpirun = Path(sys.prefix) / "bin" / "mpirun"
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        str(mpirun) if mpirun.exists() else shutil.which("mpirun"),
        "--oversubscribe",
        "-n",
        str(ranks),
        sys.executable,
        *map(str, args),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(
            f"mpirun -n {ranks} {' '.join(map(str, args))} failed:\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


def bytes_rows(backend_name):
    rows = []
    for w in WORKERS:
        out = mpirun_python(w, [__file__, "--bytes-worker", "--backend", backend_name])
        ranks = json.loads(next(l for l in out.splitlines() if l.startswith("BENCH "))[6:])
        ist_f, ma_f, theta, total = formula_bytes(w)
        rows.append(
            {
                "workers": w,
                "theta": theta,
                "params": total,
                "ist_formula": ist_f,
                "ma_formula": ma_f,
                "ist_measured": [r["ist_bytes"] for r in ranks],
                "ma_measured": [r["ma_bytes"] for r in ranks],
                "ist_ms": max(r["ist_ms"] for r in ranks),
                "ma_ms": max(r["ma_ms"] for r in ranks),
            }
        )
    return rows


# ---- (d): time to 0.88 validation accuracy -----------------------------------------
def run_job(ranks, overrides, log_dir):
    out = mpirun_python(
        ranks,
        [
            "-m",
            "horn.cli",
            "run",
            RACE_JOB,
            "--quiet",
            "--set",
            f"log.dir={log_dir}",
            "--set",
            "log.plot=false",
            *[a for o in overrides for a in ("--set", o)],
        ],
        timeout=7200,
    )
    return out.strip().splitlines()[-1].split("run directory ")[1]


def first_reach(run_dir, target=TARGET_VAL):
    """The first epoch record at or above ``target`` val accuracy, with the bytes rank 0
    sent and the steps it ran up to then; None when never reached."""
    job = json.loads((Path(run_dir) / "job.json").read_text())
    rows = [json.loads(l) for l in open(Path(run_dir) / "metrics.jsonl")]
    sent = 0
    for row in rows:
        if "superstep" in row:
            sent += row["bytes_sent"]
        elif "epoch" in row and row["val_accuracy"] >= target:
            return {
                "job": job,
                "epoch": row["epoch"],
                "step": row["step"],
                "time_s": row["time_s"],
                "bytes": sent,
                "val": row["val_accuracy"],
            }
    final = next((r for r in rows if r.get("kind") == "final"), {})
    return {
        "job": job,
        "epoch": None,
        "val": final.get("val_accuracy"),
        "test": final.get("test_accuracy"),
        "time_s": final.get("time_s"),
    }


def race_flops(reach):
    """Matmul FLOPs per worker up to ``reach``: full-parent steps during the warm-up
    (and every step of model averaging), compact steps during sub-network rounds."""
    job = reach["job"]
    widths = [784] + [l["units"] for l in job["model"]["layers"] if "units" in l]
    batch, steps = job["train"]["batch_size"], reach["step"]
    p = job["parallel"]
    if p["workers"] == 1:
        return steps * step_flops(widths, batch)
    warm = min(p.get("subnet", {}).get("warmup_steps", 0), steps)
    compact = compact_widths(p["workers"], widths)
    return warm * step_flops(widths, batch) + (steps - warm) * step_flops(compact, batch)


def race(subnet_dir, *ma_dirs):
    rows = []
    for name, run_dir in [("sub-networks", subnet_dir)] + [("model averaging", d) for d in ma_dirs]:
        reach = first_reach(run_dir)
        p = reach["job"]["parallel"]
        layout = f"{p['groups']} x {p['workers']}, local_steps {p['local_steps']}"
        if reach["epoch"] is None:
            rows.append(
                {
                    "name": name,
                    "layout": layout,
                    "run": run_dir,
                    "reached": False,
                    "val": reach["val"],
                    "time_s": reach["time_s"],
                }
            )
            continue
        rows.append(
            {
                "name": name,
                "layout": layout,
                "run": run_dir,
                "reached": True,
                "epoch": reach["epoch"],
                "step": reach["step"],
                "time_s": reach["time_s"],
                "bytes": reach["bytes"],
                "flops": race_flops(reach),
                "val": reach["val"],
            }
        )
    return rows


# ---- report --------------------------------------------------------------------------
def tables(compute, nbytes, races, backend_name, load):
    out = []
    out.append("### (a) worker step vs parent step, and (b) gather + scatter per round\n")
    out.append(
        f"Parent MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, backend "
        f"{backend_name}, SGD momentum {MOMENTUM}; a worker's compact sub-network is "
        f"{'-'.join(map(str, compact_widths(2)))} (W=2) or "
        f"{'-'.join(map(str, compact_widths(4)))} (W=4). Ideal = matmul FLOP fraction. "
        f"Round = {LOCAL_STEPS} worker steps + gather (the worker's plan, parameters) + "
        f"scatter (all W blocks into the parent, what every rank does at assembly); "
        f"communication is in (c). Medians of {BLOCKS} interleaved blocks of {REPS} "
        f"steps; the measured fraction is the median of per-block ratios (worker and parent "
        f"blocks timed in the same block), spread = slowest/fastest block of a step variant "
        f"(noisy above {NOISY}: other processes took the cores). {load}.\n"
    )
    out.append(
        "| threads | W | parent ms/step | worker ms/step | measured fraction | ideal "
        "fraction | measured / ideal (target <= 1.2) | gather ms | scatter ms | round ms "
        "| gather+scatter share (target < 10%) | spread |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in compute:
        out.append(
            f"| {r['threads']} | {r['workers']} | {r['parent_ms']:.1f} | "
            f"{r['worker_ms']:.1f} | {r['measured']:.3f} | {r['ideal']:.3f} | "
            f"{r['vs_ideal']:.2f}x {'met' if r['vs_ideal'] <= 1.2 else 'MISSED'} | "
            f"{r['gather_ms']:.2f} | {r['scatter_ms']:.2f} | {r['round_ms']:.0f} | "
            f"{100 * r['share']:.2f}% {'met' if r['share'] < 0.1 else 'MISSED'} | "
            f"{r['spread']:.2f}{' noisy' if r['spread'] > NOISY else ''} |"
        )
    out.append("\n### (c) bytes per rank per round\n")
    out.append(
        "Formulas (horn's cost model, `horn/barriers/subnet.py`): IST assembly = ring "
        "Allgatherv, 4 (W-1) |theta_w| bytes per rank, |theta_w| = the worker's compact "
        "sub-network; model averaging = ring Allreduce of the parent, 4 * 2 (W-1)/W * P. "
        "Measured = `peer.bytes_sent_total` around the real `Peer.allgatherv` / "
        "`Peer.allreduce_mean` calls under `mpirun -n W`, per rank (min-max over ranks: "
        "every rank is a worker, none is a leader; the blocks differ by at most a unit "
        'row/column). With `parallel.subnet.momentum = "keep"` the IST bytes double.\n'
    )
    out.append(
        "| W | parent P | worker |theta_w| | IST bytes/rank (formula) | IST measured "
        "(min-max) | MA bytes/rank (formula) | MA measured (min-max) | MA / IST (target "
        ">= W) | IST ms | MA ms |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in nbytes:
        ratio = min(r["ma_measured"]) / max(r["ist_measured"])
        out.append(
            f"| {r['workers']} | {r['params']:,} | {r['theta']:,} | {r['ist_formula']:,} | "
            f"{min(r['ist_measured']):,}-{max(r['ist_measured']):,} | {r['ma_formula']:,} "
            f"| {min(r['ma_measured']):,}-{max(r['ma_measured']):,} | {ratio:.2f}x "
            f"{'met' if ratio >= r['workers'] else 'MISSED'} | {r['ist_ms']:.1f} | "
            f"{r['ma_ms']:.1f} |"
        )
    if races:
        out.append(f"\n### (d) per worker, to first reach {TARGET_VAL} validation accuracy\n")
        out.append(
            "Parent 784-2048-2048-10 (`jobs/fashion_subnet.toml`; 4096 is too slow to "
            "train twice on 2 cores), 4 ranks on 2 cores. Model averaging = the same job "
            f"with `{', '.join(RACE_MA[105][:3])}` and `parallel.local_steps` as in its row "
            "(every rank trains the whole parent on a quarter of the data, 105 steps an "
            "epoch, averaged every local_steps steps). Bytes = what rank 0 sent (superstep records); "
            "FLOPs = matmul FLOPs of one worker's steps (compact or whole-parent); wall "
            "time = the run's `time_s` at that epoch's record (evaluations included), "
            "measured at epoch ends.\n"
        )
        out.append(
            "| strategy | layout | epoch | steps/worker | wall s | MB sent/worker | "
            "GFLOP/worker | val acc |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in races:
            if r["reached"]:
                out.append(
                    f"| {r['name']} | {r['layout']} | {r['epoch']} | {r['step']} | "
                    f"{r['time_s']:.0f} | {r['bytes'] / 1e6:.0f} | {r['flops'] / 1e9:.0f} "
                    f"| {r['val']:.4f} |"
                )
            else:
                out.append(
                    f"| {r['name']} | {r['layout']} | never (final val {r['val']}) | | "
                    f"{r['time_s']:.0f} | | | |"
                )
        s = races[0]
        verdict = lambda a, b: "met" if a < b else "MISSED"
        for m in races[1:]:
            if s["reached"] and m["reached"]:
                out.append(
                    f"\nSub-networks / model averaging ({m['layout']}): bytes "
                    f"{s['bytes'] / m['bytes']:.2f}x ({verdict(s['bytes'], m['bytes'])}), "
                    f"wall time {s['time_s'] / m['time_s']:.2f}x "
                    f"({verdict(s['time_s'], m['time_s'])}), FLOPs "
                    f"{s['flops'] / m['flops']:.2f}x."
                )
        out.append("\nRuns: " + ", ".join(f"`{r['run']}`" for r in races))
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba", choices=("numba", "numpy"))
    parser.add_argument(
        "--race",
        action="store_true",
        help="(d): train sub-networks and model averaging to the target",
    )
    parser.add_argument(
        "--race-from",
        nargs="+",
        metavar="RUN",
        help="(d) from existing run directories: sub-networks, then model averaging runs",
    )
    parser.add_argument(
        "--net",
        default="mlp",
        choices=("mlp", "cnn"),
        help="cnn: the channel-partitioned CNN step ratio only (printed)",
    )
    parser.add_argument("--bytes-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bytes_worker:
        bytes_worker(args.backend)
        return
    if args.net == "cnn":
        load_before = os.getloadavg()[0]
        rows = cnn_rows(args.backend)
        print(
            cnn_table(
                rows,
                args.backend,
                f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
            )
        )
        return
    load_before = os.getloadavg()[0]
    compute = compute_rows(args.backend)
    load = (
        f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"the timings, on {os.cpu_count()} cores ({platform.machine()})"
    )
    nbytes = bytes_rows(args.backend)
    races = None
    if args.race_from:
        races = race(*args.race_from)
    elif args.race:
        log_dir = REPO / "runs" / "bench-subnet"
        sub = run_job(4, [], log_dir)
        races = race(sub, *[run_job(4, sets, log_dir) for sets in RACE_MA.values()])
    text = tables(compute, nbytes, races, args.backend, load)
    print(text)
    (REPO / "docs").mkdir(exist_ok=True)
    (REPO / "docs" / "subnet.md").write_text(
        "# Sub-network groups (HORN-27): benchmark\n\nMeasured by `python bench/subnet.py"
        + (f" --backend {args.backend}" if args.backend != "numba" else "")
        + (" --race" if args.race else "")
        + (" --race-from RUN..." if args.race_from else "")
        + "`.\n\n"
        + text
        + "\n"
    )


if __name__ == "__main__":
    main()
