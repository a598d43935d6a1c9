"""horn vs PyTorch: wall time and bytes to reach a validation accuracy (issue 7).

    python bench/vs_torch.py                 # 3 runs of every configuration: docs/vs_torch.md, .png
    python bench/vs_torch.py --quick         # smoke test: tiny data and budget, 1 run each
    python bench/vs_torch.py --runs 5 --configs ddp,sync,ma --epochs 6

Same data (Fashion-MNIST, horn's own train/validation/test split and unit scaling), same
network (MLP 784-1024-1024-10, ReLU; ``--width 4096`` for the wide parent), same float32,
same initial weights (horn's He initialisation for the run's seed, copied into PyTorch),
same optimizer (SGD, Nesterov momentum 0.9, weight decay 1e-4) and the same schedule
(``horn.schedules.Schedule``: linear warm-up, then cosine over the run), the same global
batch (256 = 2 x 128) and the same evaluation cadence (validation accuracy after every
epoch; the clock excludes that epoch's evaluation, as horn's ``time_s`` does) for:

  torch      PyTorch, one process x 2 threads (batch 256)
  ddp        PyTorch DistributedDataParallel over gloo (127.0.0.1), 2 processes x 1 thread
  sync       horn synchronous data-parallel: 2 ranks, parameter average every step
  ma         horn model averaging, 2 ranks, an average every 8 local steps
  subnet1x2  horn sub-network groups, 1 group x 2 workers
  subnet2x2  horn sub-network groups, 2 groups x 2 workers (4 ranks on 2 cores)
  ec         horn ensemble compression (EC-DNN), 2 groups x 1 worker
  ...        and the tuned horn jobs in jobs/bench_*.toml (see TUNED)

Every run is a fresh set of processes (``--worker``) with the thread variables set before
import: horn under ``mpirun --bind-to none`` (its ``horn.training_run.run_job``, metrics read
from metrics.jsonl), PyTorch with the loop written here. Bytes are per rank: horn's Peer
accounting (ring model, 2 (p-1)/p x 4 bytes x parameters per Allreduce) summed over the
superstep records; DDP is charged the same model, 2 (p-1)/p x 4 x parameters per step.
Peak memory is ``getrusage(RUSAGE_SELF).ru_maxrss`` of each process, the largest reported.
Results append to runs/vs_torch/results.jsonl, so ``--resume`` continues a stopped bench.
Without torch the PyTorch configurations are skipped with a message.
"""

import argparse
import json
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import datetime
from importlib import metadata
from pathlib import Path

import horn  # noqa: F401  first: horn pins Numba's threading layer before numba/torch load
import horn.backends.numba_backend  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "jobs/bench_vs_torch.toml"
OUT = REPO / "runs/vs_torch"
DOCS = REPO / "docs"
TARGETS = (0.85, 0.88)
RANKS = 2  # processes of the distributed PyTorch run and of horn's 2-rank configurations
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
TORCH_MISSING = (
    "torch not installed: skipping the PyTorch configurations (pip install torch==2.13.0)"
)
QUICK = {"epochs": 2, "limit": 8192}

# name -> label, kind (torch | ddp | horn), processes, threads each, horn job overrides
# (a dict of sections) or a job file of its own ("job").
SUBNET = {
    "local_steps": 20,
    "subnet": {
        "partition": "balanced",
        "scale": "inverse",
        "scale_at": "weights",
        "momentum": "reset",
    },
}
CONFIGS = {
    "torch": {"label": "PyTorch, 1 process x 2 threads", "kind": "torch", "procs": 1, "threads": 2},
    "ddp": {
        "label": "PyTorch DDP (gloo), 2 processes x 1 thread",
        "kind": "ddp",
        "procs": RANKS,
        "threads": 1,
    },
    "sync": {
        "label": "horn sync data-parallel (local_steps 1), 2 ranks",
        "kind": "horn",
        "procs": 2,
        "parallel": {"groups": 2, "workers": 1, "local_steps": 1},
    },
    "ma": {
        "label": "horn model averaging (local_steps 8), 2 ranks",
        "kind": "horn",
        "procs": 2,
        "parallel": {"groups": 2, "workers": 1, "local_steps": 8},
    },
    "subnet1x2": {
        "label": "horn sub-networks, 1 group x 2 workers (local_steps 20)",
        "kind": "horn",
        "procs": 2,
        "parallel": {"groups": 1, "workers": 2, **SUBNET},
    },
    "subnet2x2": {
        "label": "horn sub-networks, 2 groups x 2 workers, 4 ranks (oversubscribed)",
        "kind": "horn",
        "procs": 4,
        "parallel": {"groups": 2, "workers": 2, "barrier": "average", "global_every": 1, **SUBNET},
    },
    "ec": {
        "label": "horn EC-DNN ensemble compression, 2 groups x 1 worker",
        "kind": "horn",
        "procs": 2,
        "ec_epochs": 2,  # an ensemble barrier every 2 epochs (and at the end)
        "parallel": {
            "groups": 2,
            "workers": 1,
            "barrier": "ensemble",
            "ensemble": {
                "teacher_data": "shared",
                "distill_size": 2048,
                "distill_steps": 100,
                "temperature": 2.0,
                "alpha": 0.5,
                "student": "local",
                "final": "compressed",
            },
        },
    },
}
# Tuned horn configurations (validation accuracy only; seeds 100+ while tuning), each a job
# file of its own: added when the file exists.
TUNED = {
    "ma_tuned": {
        "label": "horn model averaging, tuned (jobs/bench_ma.toml), 2 ranks",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_ma.toml",
    },
    "subnet_tuned": {
        "label": "horn sub-networks 1 x 2, tuned (jobs/bench_subnet.toml), 2 ranks",
        "kind": "horn",
        "procs": 2,
        "job": "jobs/bench_subnet.toml",
    },
    # control: PyTorch DDP given ma_tuned's training settings (batch 2 x 64, same lr, epochs),
    # so that what the tuning bought is not credited to horn
    "ddp_tuned": {
        "label": "control: PyTorch DDP with ma_tuned's settings (jobs/bench_ma.toml)",
        "kind": "ddp",
        "procs": RANKS,
        "threads": 1,
        "job": "jobs/bench_ma.toml",
    },
}
for _name, _config in TUNED.items():
    if (REPO / _config["job"]).exists():
        CONFIGS[_name] = _config
BASELINE = "ddp"
ANALYSIS = "## Analysis"  # docs/vs_torch.md keeps this section (written by hand) on a re-run


# ---- jobs ------------------------------------------------------------------------------
def job_doc(config, seed, epochs, limit, width, sets=()):
    """The horn job (a dict for ``job_from_dict``) of one configuration and seed;
    ``sets`` are ``--set section.key=value`` overrides (tuning sweeps), applied last."""
    from horn.jobs import apply_override

    path = REPO / config.get("job", BASE)
    doc = tomllib.loads(path.read_text())
    if width:
        for layer in doc["model"]["layers"][:-1]:
            if "units" in layer:
                layer["units"] = width
    doc.setdefault("parallel", {}).update(config.get("parallel", {}))
    train = doc["train"]
    if "job" not in config:  # a tuned job file keeps its own budget
        train["epochs"] = epochs
    train.update(seed=seed, eval_every=1)
    train.pop("steps", None)
    if limit:
        doc["data"]["limit"] = limit
    if "ec_epochs" in config:  # ensemble barrier every ec_epochs of a group's shard
        groups = doc["parallel"]["groups"]
        per_epoch = max(1, (limit or 54000) // groups // train["batch_size"])
        doc["parallel"]["local_steps"] = per_epoch * config["ec_epochs"]
    doc["log"] = {"dir": str(OUT / "runs"), "progress": "none", "plot": False}
    for item in sets:
        apply_override(doc, item)
    return doc, str(path)


def global_batch(doc, procs):
    """Samples per optimizer step over all ranks (PyTorch peers: the horn job's per-rank
    batch times RANKS, so the single process and DDP take the same steps)."""
    return doc["train"]["batch_size"] * procs


# ---- horn worker (one mpirun) ------------------------------------------------------------
def horn_worker(spec_path, out_path):
    from horn import trainer as trainer_module
    from horn.abort import install_abort_hook
    from horn.jobs import job_from_dict
    from horn.model import Model
    from horn.parallel import create_peer
    from horn.training_run import run_job

    install_abort_hook()
    spec = json.loads(Path(spec_path).read_text())
    job = job_from_dict(spec["job"], spec["source"], default_name="bench_vs_torch")
    peer = create_peer(job)
    rank = peer.rank if peer else 0
    snapshots = {}  # target -> (spec, backend, host params) of the first model reaching it
    stop_at = spec.get("stop_at")

    def evaluate(self, split, model=None):
        """horn's Trainer.evaluate, which also keeps (on rank 0) the evaluated model's
        parameters when it first reaches a target, for its test accuracy afterwards."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        if len(y) == 0:
            return float("nan")
        model = model if model is not None else self.sync.eval_model(self.model)
        acc = model.accuracy(x, y)
        if split == "val" and rank == 0 and hasattr(model, "params"):
            for target in TARGETS:
                if acc >= target and target not in snapshots:
                    snapshots[target] = (
                        model.spec(),
                        model.backend,
                        model.backend.to_host(model.params).copy(),
                    )
        if split == "val" and stop_at is not None and acc >= stop_at:
            request_stop()
        return acc

    trainer_module.Trainer.evaluate = evaluate
    profile = os.environ.get("VS_TORCH_PROFILE")  # --profile: cProfile of rank 0's run
    if profile and rank == 0:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(run_job, job, progress=False, peer=peer)
        with open(profile, "w") as f:
            stats = pstats.Stats(profiler, stream=f).sort_stats("tottime")
            stats.print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)
    else:
        result = run_job(job, progress=False, peer=peer)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_all = peer.world.gather(rss, root=0) if peer else [rss]
    if rank != 0:
        return
    from horn.data import load_dataset

    data = load_dataset(job.data, base_dir=job.base_dir)
    test_at = {}
    for target, (mspec, backend, params) in snapshots.items():
        model = Model.from_spec(mspec, backend, initialize_params=False)
        model.params[...] = backend.asarray(params)
        test_at[str(target)] = model.accuracy(data.x_test, data.y_test)
    rows = [json.loads(line) for line in open(Path(result["run_dir"]) / "metrics.jsonl")]
    final = next((r for r in rows if r.get("kind") == "final"), None)  # None: stopped at the target
    epochs, sent = [], 0
    for r in rows:
        if "superstep" in r and "bytes_sent" in r:
            sent += r["bytes_sent"]
        elif "epoch" in r and "val_accuracy" in r:
            epochs.append(
                {
                    "epoch": r["epoch"],
                    "step": r["step"],
                    "time_s": r["time_s"],
                    "val_accuracy": r["val_accuracy"],
                    "samples_per_s": r["samples_per_s"],
                    "bytes": sent,
                    # every rank's, summed: what crossed between hosts (absent on one host)
                    "inter_host_bytes": sum(r.get("bytes_sent_inter_host_per_rank", [])),
                }
            )
    out = {
        "epochs": epochs,
        "test_at": test_at,
        "maxrss_mb": rss_all,
        "params": model_size(job, data),
        "run_dir": result["run_dir"],
        "full_budget": final is not None,
        "final_test_accuracy": final and final["test_accuracy"],
        "final_val_accuracy": final and final["val_accuracy"],
        "train_s": final["time_s"] if final else epochs[-1]["time_s"],
        "bytes_total": final.get("bytes_sent_per_rank", [0])[0] if final else sent,
        "steps": final["steps"] if final else result.get("step"),
    }
    Path(out_path).write_text(json.dumps(out))


def request_stop():
    """Stop a horn run early, cleanly, through its preemption path: the ranks agree (one
    tiny Allreduce) at the next round boundary and run_job returns. Training time up to
    the evaluation that asked is unaffected. (Runs the full budget when horn lacks it.)"""
    from horn import resume

    requested = getattr(resume, "_requested", None)
    if isinstance(requested, list) and not requested:
        requested.append(0)


def model_size(job, data):
    from horn.jobs import model_spec
    from horn.model import Model

    return Model.from_spec(model_spec(job, data.features), "numpy", initialize_params=False).size


# ---- PyTorch worker (one process, or one DDP rank) ------------------------------------------
def torch_sgd(torch, parameters, train):
    """PyTorch's SGD with the job's ``train`` settings (lr, momentum, nesterov, weight decay)."""
    return torch.optim.SGD(
        parameters,
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
    )


def torch_sequential(torch, spec, init):
    """nn.Sequential of the horn model spec (dense + activation, dropout) holding horn's
    initial weights (horn's W is (in, out); Linear.weight is (out, in))."""
    modules, features = [], spec["in_features"]
    for i, layer in enumerate(spec["layers"]):
        kind = layer["type"]
        if kind == "dense":
            linear = torch.nn.Linear(features, layer["units"])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(init[f"param/{i}.W"].T.copy()))
                linear.bias.copy_(torch.from_numpy(init[f"param/{i}.b"]))
            modules.append(linear)
            act = layer.get("activation", "identity")
            if act == "relu":
                modules.append(torch.nn.ReLU())
            elif act not in ("identity", None, "linear"):
                raise SystemExit(f"bench/vs_torch.py: activation {act!r} not mapped to torch")
            features = layer["units"]
        elif kind == "dropout":
            modules.append(torch.nn.Dropout(layer.get("p", 0.5)))
        else:
            raise SystemExit(f"bench/vs_torch.py: layer type {kind!r} not mapped to torch")
    return torch.nn.Sequential(*modules)


def torch_worker(spec_path, out_path, rank, world, threads):
    import numpy as np

    from horn.data import load_dataset
    from horn.jobs import job_from_dict, model_spec
    from horn.model import Model
    from horn.schedules import Schedule

    try:
        import torch
    except ImportError as exc:
        print(f"import torch failed: {exc}", file=sys.stderr)
        Path(out_path).write_text("null")
        return
    torch.set_num_threads(threads)
    spec = json.loads(Path(spec_path).read_text())
    job = job_from_dict(spec["job"], spec["source"], default_name="bench_vs_torch")
    t = job.train
    data = load_dataset(job.data, base_dir=job.base_dir)
    mspec = model_spec(job, data.features)
    init = Model.from_spec(mspec, "numpy", seed=t.seed).state_arrays()
    torch.manual_seed(t.seed)
    net = torch_sequential(torch, mspec, init)
    params = sum(p.numel() for p in net.parameters())
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world)  # env://, 127.0.0.1
        model = torch.nn.parallel.DistributedDataParallel(net)
    else:
        model = net
    opt = torch_sgd(torch, model.parameters(), t)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = spec["global_batch"] // world
    n = len(data.y_train)
    per_epoch = (n // world) // batch
    total = t.epochs * per_epoch
    schedule = Schedule(t.schedule, t.lr, total, t.warmup_steps, t.step_size, t.gamma, t.min_lr)
    bytes_per_step = 2 * (world - 1) * 4 * params // world if world > 1 else 0
    xb = np.empty((batch, data.features), np.float32)
    yb = np.empty(batch, np.int64)
    xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)

    def accuracy(x, y):
        net.eval()
        correct = 0
        with torch.no_grad():
            for lo in range(0, len(y), 2048):
                out = net(torch.from_numpy(x[lo : lo + 2048]))
                correct += int((out.argmax(1).numpy() == y[lo : lo + 2048]).sum())
        net.train()
        return correct / len(y)

    if world > 1:
        dist.barrier()
    epochs, snapshots, step = [], {}, 0
    stop_at = spec.get("stop_at")
    stop = torch.zeros(1)
    start = epoch_start = time.perf_counter()
    for epoch in range(t.epochs):
        order = np.random.default_rng((t.seed, epoch)).permutation(n)[rank::world]
        loss_sum, correct = 0.0, 0
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            np.take(data.x_train, idx, axis=0, out=xb)
            np.take(data.y_train, idx, axis=0, out=yb)
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            opt.zero_grad(set_to_none=True)
            out = model(xt)
            loss = loss_fn(out, yt)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * batch  # what horn's loop reads every step too
            correct += int((out.argmax(1) == yt).sum())
            step += 1
        now = time.perf_counter()
        if rank == 0:
            val = accuracy(data.x_val, data.y_val)
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "time_s": now - start,
                    "val_accuracy": val,
                    "loss": loss_sum / (per_epoch * batch),
                    "samples_per_s": per_epoch * batch * world / (now - epoch_start),
                    "bytes": step * bytes_per_step,
                }
            )
            for target in TARGETS:
                if val >= target and target not in snapshots:
                    snapshots[target] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            stop[0] = float(stop_at is not None and val >= stop_at)
        if stop_at is not None and world > 1:
            dist.broadcast(stop, src=0)  # rank 1 would wait for rank 0's evaluation anyway
        if stop[0]:
            break
        epoch_start = time.perf_counter()
    train_s = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"maxrss_mb": [rss], "rank": rank}
    if rank == 0:
        full = not stop[0]
        final_test = accuracy(data.x_test, data.y_test) if full else None
        final_val = accuracy(data.x_val, data.y_val) if full else None
        train_s = train_s if full else epochs[-1]["time_s"]
        test_at = {}
        for target, state in snapshots.items():
            net.load_state_dict(state)
            test_at[str(target)] = accuracy(data.x_test, data.y_test)
        out.update(
            epochs=epochs,
            test_at=test_at,
            final_test_accuracy=final_test,
            full_budget=full,
            final_val_accuracy=final_val,
            train_s=train_s,
            bytes_total=step * bytes_per_step,
            steps=step,
            params=params,
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    Path(out_path).write_text(json.dumps(out))


# ---- driver ----------------------------------------------------------------------------
def thread_env(threads, extra=None):
    env = dict(os.environ, **{var: str(threads) for var in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_here(name, config, spec_path, out_path, args):
    """Start one run's processes on this host: (Popen list, the result file of each)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    if config["kind"] == "horn":
        mpirun = Path(sys.prefix) / "bin" / "mpirun"
        cmd = [
            str(mpirun) if mpirun.exists() else shutil.which("mpirun"),
            "--oversubscribe",
            "--bind-to",
            "none",
            "-n",
            str(config["procs"]),
            *me,
            "--worker",
            "horn",
            str(spec_path),
            str(out_path),
        ]
        env = thread_env(1, {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
        if args.profile:
            env["VS_TORCH_PROFILE"] = str(OUT / f"profile-{name}.txt")
        return [
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        ], [out_path]
    world = config["procs"] if config["kind"] == "ddp" else 1
    extra = (
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GLOO_SOCKET_IFNAME": "lo"}
        if world > 1
        else {}
    )
    outs = [out_path.with_suffix(f".r{r}") for r in range(world)]
    return [
        subprocess.Popen(
            [*me, *torch_worker_args(spec_path, outs[r], r, world, config)],
            env=thread_env(config["threads"], extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ], outs


def torch_worker_args(spec_path, out_path, rank, world, config):
    """This script's arguments for one PyTorch process (after the interpreter and script)."""
    return [
        "--worker",
        "torch",
        str(spec_path),
        str(out_path),
        "--rank",
        str(rank),
        "--world",
        str(world),
        "--threads",
        str(config["threads"]),
    ]


def run_once(name, config, seed, args, stop_at=None, launch=None):
    """One run of one configuration: its result dict, or None when torch is missing.
    ``stop_at``: end the run at the first evaluation reaching that validation accuracy.
    ``launch``: starts the processes (``launch_here``'s signature; bench/cluster.py puts
    them on simulated hosts)."""
    doc, source = job_doc(config, seed, args.epochs, args.limit, args.width, args.set)
    procs = config["procs"]
    tag = f"{name}-s{seed}-{os.getpid()}"
    spec_path, out_path = OUT / "specs" / f"{tag}.json", OUT / "specs" / f"{tag}.out"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "job": doc,
        "source": source,
        "global_batch": global_batch(doc, RANKS),
        "stop_at": stop_at,
    }
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    procs_list, outs = (launch or launch_here)(name, config, spec_path, out_path, args)
    logs = []
    for proc in procs_list:
        try:
            logs.append(proc.communicate(timeout=args.timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs_list:
                p.kill()
            sys.exit(f"{name} seed {seed}: no result within {args.timeout} s")
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs_list):
        sys.exit(f"{name} seed {seed} failed:\n" + "\n".join(logs)[-4000:])
    results = [json.loads(Path(o).read_text()) for o in outs]
    if results[0] is None:
        return None
    result = results[0]
    for extra_rank in results[1:]:
        result["maxrss_mb"] += extra_rank["maxrss_mb"]
    result.update(
        config=name,
        seed=seed,
        wall_s=wall,
        procs=procs,
        global_batch=global_batch(doc, procs if config["kind"] == "horn" else RANKS),
        per_rank_batch=doc["train"]["batch_size"]
        if config["kind"] == "horn"
        else spec["global_batch"] // (procs if config["kind"] == "ddp" else 1),
        signature=signature(args),
        load=os.getloadavg()[0],
    )
    for path in [spec_path, *outs]:
        Path(path).unlink(missing_ok=True)
    return result


def signature(args):
    return {
        "epochs": args.epochs,
        "limit": args.limit,
        "width": args.width,
        "set": args.set,
        "full_runs": args.full_runs,
    }


def first_reach(result, target):
    """(time_s, bytes, epoch) of the first evaluation at or above ``target``, or None."""
    for e in result["epochs"]:
        if e["val_accuracy"] >= target:
            return e["time_s"], e["bytes"], e["epoch"]
    return None


def ms_per_step(result):
    """Median over epochs of the time per optimizer step (global batch / samples/s)."""
    rates = [e["samples_per_s"] for e in result["epochs"]]
    return 1e3 * result["global_batch"] / statistics.median(rates) if rates else math.nan


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(name, runs):
    full = [r for r in runs if r.get("full_budget", True)]
    row = {
        "config": name,
        "label": CONFIGS[name]["label"],
        "runs": len(runs),
        "full": len(full),
        "final_test": median([r["final_test_accuracy"] for r in full]),
        "final_val": median([r["final_val_accuracy"] for r in full]),
        "samples_per_s": median(
            [statistics.median([e["samples_per_s"] for e in r["epochs"]]) for r in runs]
        ),
        "ms_per_step": median([ms_per_step(r) for r in runs]),
        "train_s": median([r["train_s"] for r in full]),
        "wall_s": median([r["wall_s"] for r in full]),
        "bytes_total": median([r["bytes_total"] for r in runs]),
        "rss_mb": median([max(r["maxrss_mb"]) for r in runs]),
        "procs": runs[0]["procs"],
        "per_rank_batch": runs[0]["per_rank_batch"],
        "ms_by_seed": {r["seed"]: ms_per_step(r) for r in runs},
    }
    for target in TARGETS:
        hits = [first_reach(r, target) for r in runs]
        reached = [h for h in hits if h is not None]
        row[f"reached_{target}"] = len(reached)
        # a run that never reached the target counts as infinitely slow in the median
        times = sorted(h[0] if h else math.inf for h in hits)
        t = statistics.median(times) if times else math.inf
        row[f"time_{target}"] = t if math.isfinite(t) else None
        row[f"bytes_{target}"] = median([h[1] for h in reached]) if row[f"time_{target}"] else None
        row[f"epoch_{target}"] = median([h[2] for h in reached]) if row[f"time_{target}"] else None
        row[f"test_at_{target}"] = median([r["test_at"].get(str(target)) for r in runs])
    return row


def fmt(value, kind):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "s":
        return f"{value:.1f}"
    if kind == "acc":
        return f"{value:.4f}"
    if kind == "mb":
        return f"{value / 1e6:,.0f}" if value >= 1e6 else f"{value / 1e6:.2f}"
    if kind == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(rows):
    base = next((r for r in rows if r["config"] == BASELINE), None)
    b = base or {}
    lines = [
        "| configuration | procs x batch | s to 0.85 val | s to 0.88 val | vs DDP (0.88) "
        "| MB to 0.88 (per rank) | vs DDP | test acc @0.88 | final test acc | final val acc "
        "| samples/s | ms/step | vs DDP | peak RSS MB/process | train s (budget) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n_full = f" (n={r['full']})" if r["full"] < r["runs"] else ""
        reach = {
            t: (
                f"{fmt(r[f'time_{t}'], 's')}"
                + (f" ({r[f'reached_{t}']}/{r['runs']})" if r[f"reached_{t}"] < r["runs"] else "")
            )
            for t in TARGETS
        }
        lines.append(
            f"| {r['config']}: {r['label']} | {r['procs']} x {r['per_rank_batch']} "
            f"| {reach[0.85]} | {reach[0.88]} | {fmt(ratio(r['time_0.88'], b.get('time_0.88')), 'x')} "
            f"| {fmt(r['bytes_0.88'], 'mb')} | {fmt(ratio(r['bytes_0.88'], b.get('bytes_0.88')), 'x')} "
            f"| {fmt(r['test_at_0.88'], 'acc')} | {fmt(r['final_test'], 'acc')}{n_full} "
            f"| {fmt(r['final_val'], 'acc')}{n_full} | {fmt(r['samples_per_s'], 'n')} "
            f"| {r['ms_per_step']:.1f} | {fmt(ratio(r['ms_per_step'], b.get('ms_per_step')), 'x')} "
            f"| {fmt(r['rss_mb'], 'n')} | {fmt(r['train_s'], 's')} |"
        )
    return "\n".join(lines)


def targets(rows):
    """The issue's targets, each MET / MISSED / not measured, with the numbers."""
    by = {r["config"]: r for r in rows}
    horn_rows = [r for r in rows if CONFIGS[r["config"]]["kind"] == "horn"]
    lines = []
    reached = [r for r in horn_rows if r["time_0.88"] is not None]
    best = min(reached, key=lambda r: r["time_0.88"]) if reached else None

    def verdict(name, value, limit):
        if value is None:
            lines.append(f"- {name}: not measured")
        else:
            lines.append(
                f"- {name}: {value:.2f}x (target <= {limit}x): "
                f"**{'MET' if value <= limit else 'MISSED'}**"
            )

    tag = f" (best horn configuration: {best['config']})" if best else ""
    verdict(
        f"horn's best time to 0.88 val vs PyTorch DDP{tag}",
        ratio(best and best["time_0.88"], by.get("ddp", {}).get("time_0.88")),
        0.5,
    )
    verdict(
        f"horn's best time to 0.88 val vs PyTorch single process{tag}",
        ratio(best and best["time_0.88"], by.get("torch", {}).get("time_0.88")),
        0.7,
    )
    verdict(
        "horn sync data-parallel time per step vs PyTorch DDP",
        ratio(by.get("sync", {}).get("ms_per_step"), by.get("ddp", {}).get("ms_per_step")),
        1.1,
    )
    if "sync" in by and "ddp" in by:  # runs next to each other share the machine's load
        seeds = sorted(set(by["sync"]["ms_by_seed"]) & set(by["ddp"]["ms_by_seed"]))
        paired = [by["sync"]["ms_by_seed"][s] / by["ddp"]["ms_by_seed"][s] for s in seeds]
        if paired:
            lines.append(
                f"  (paired by seed, sync and DDP run back to back: "
                f"{', '.join(f'{x:.2f}x' for x in paired)}; median "
                f"{statistics.median(paired):.2f}x)"
            )
    verdict(
        f"horn's bytes to 0.88 val vs PyTorch DDP{tag}",
        ratio(best and best["bytes_0.88"], by.get("ddp", {}).get("bytes_0.88")),
        0.1,
    )
    if best and "ddp_tuned" in by and best["config"] == "ma_tuned":
        verdict(
            "control, same settings: ma_tuned's time to 0.88 vs PyTorch DDP with those "
            "settings (ddp_tuned)",
            ratio(best["time_0.88"], by["ddp_tuned"]["time_0.88"]),
            0.5,
        )
    return "\n".join(lines)


def plot(runs_by_config, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(runs_by_config.items()):
        color = colors[i % len(colors)]
        style = "--" if CONFIGS[name]["kind"] != "horn" else "-"
        for j, r in enumerate(runs):
            xs = [e["time_s"] for e in r["epochs"]]
            ys = [e["val_accuracy"] for e in r["epochs"]]
            label = name if j == 0 else None
            ax_t.plot(xs, ys, style, marker=".", color=color, alpha=0.7, label=label)
            sent = [(e["bytes"] / 1e6, e["val_accuracy"]) for e in r["epochs"] if e["bytes"]]
            if sent:  # log axis: evaluations before the first byte are left out
                ax_b.plot(*zip(*sent), style, marker=".", color=color, alpha=0.7, label=label)
    for ax in (ax_t, ax_b):
        for target in TARGETS:
            ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0.75, 0.92)
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8)
    ax_t.set_xlabel("wall seconds of training")
    ax_b.set_xlabel("MB sent per rank (ring model; the single process sends none)")
    ax_b.set_xscale("log")
    fig.suptitle("horn vs PyTorch: Fashion-MNIST MLP 784-1024-1024-10, time and bytes to accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_doc(rows, runs_by_config, args, loads, elapsed):
    text, verdicts = table(rows), targets(rows)
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    budget = f"{args.epochs} epochs" + (f" of {args.limit} training samples" if args.limit else "")
    width = args.width or 1024
    note = (
        f"Measured {datetime.now():%Y-%m-%d %H:%M} by `python bench/vs_torch.py "
        f"{' '.join(a for a in sys.argv[1:] if a != '--resume')}".rstrip()
        + f"` on {cpu} ({os.cpu_count()} logical CPUs, no GPU); "
        f"python {platform.python_version()}, numpy {metadata.version('numpy')}, numba "
        f"{metadata.version('numba')}, torch {torch_version}. **1-minute load average** before "
        f"each run: min {min(loads):.1f}, median {statistics.median(loads):.1f}, max "
        f"{max(loads):.1f} (the machine was shared with other work; 2 cores). "
        f"The runs took {elapsed / 60:.0f} minutes of wall time in all (start-up included).\n\n"
        f"Fashion-MNIST, horn's split (54,000 train / 6,000 validation / 10,000 test), MLP "
        f"784-{width}-{width}-10 (ReLU), float32, the same initial weights per seed, SGD with "
        f"Nesterov momentum 0.9, weight decay 1e-4, lr 0.05 with 100 warm-up steps then cosine "
        f"over the run (jobs/bench_vs_torch.toml; tuned horn rows name their own job), "
        f"{budget}, validation accuracy after every epoch. Medians over {args.runs} run(s) "
        f"(seeds {args.seed0}..{args.seed0 + args.runs - 1}; configurations interleaved within each seed)"
        + (
            f"; the first {args.full_runs} seed(s) train the whole budget (final accuracies, "
            f"train s), the others stop at the first evaluation >= {max(TARGETS)} (horn through "
            f"its preemption path) to keep the bench short. "
            if args.full_runs < args.runs
            else ". "
        )
        + '"s to 0.88 val" is the training clock (first step to the end of the epoch whose '
        "validation accuracy first reached 0.88, earlier evaluations included, process "
        "start-up and data loading excluded; a run that never reached it counts as infinitely "
        'slow, (k/n) = runs that reached it); "test acc @0.88" is that model\'s test '
        "accuracy. Bytes are sent per rank up to that evaluation: horn's Peer accounting "
        "(ring model 2(p-1)/p x 4 B x parameters per Allreduce; Allgatherv (p-1) x own block); "
        "DDP is charged the same ring model, 2(p-1)/p x 4 B x parameters per step (gloo's actual "
        "algorithm and DDP's start-up broadcast are not counted). ms/step = global batch / "
        "samples/s (median epoch, evaluation excluded); for sub-network and EC rows a step is "
        "a per-rank step of a smaller network or of one group, so compare their time to "
        "accuracy, not ms/step. Peak RSS is ru_maxrss, the largest process. All horn rows run "
        "under `mpirun --bind-to none` with 1 BLAS/Numba thread per rank; PyTorch processes are "
        "unpinned too.\n"
    )
    doc = DOCS / "vs_torch.md"
    kept = ""  # a hand-written "## Analysis" section (and what follows) survives a re-run
    if doc.exists() and ANALYSIS in doc.read_text():
        kept = "\n" + doc.read_text()[doc.read_text().index(ANALYSIS) :]
    doc.write_text(
        "# horn vs PyTorch: time and bytes to accuracy\n\n" + note + "\n" + text + "\n\n"
        "Targets (ratios of medians):\n\n" + verdicts + "\n\n"
        "![validation accuracy vs wall seconds and vs bytes](vs_torch.png)\n" + kept
    )
    plot(runs_by_config, DOCS / "vs_torch.png")
    return text, verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK['epochs']} epochs of {QUICK['limit']} samples, 1 run each",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs (seeds) per configuration")
    parser.add_argument(
        "--configs", default="all", help=f"comma-separated subset of: {', '.join(CONFIGS)}"
    )
    parser.add_argument("--epochs", type=int, default=None, help="budget in epochs (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="training samples (data.limit)")
    parser.add_argument("--width", type=int, default=0, help="hidden width (default 1024)")
    parser.add_argument(
        "--full-runs",
        type=int,
        default=None,
        help="runs (the first seeds) that train the whole budget; the others "
        "stop at the first evaluation >= 0.88 val (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile rank 0 of each horn run into runs/vs_torch/profile-NAME.txt",
    )
    parser.add_argument("--stop-at", type=float, default=max(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--seed0",
        type=int,
        default=0,
        help="first seed (tuning: 100 and up, results in results-tune.jsonl)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override every configuration's job (tuning sweeps only)",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse matching results from runs/vs_torch/results.jsonl",
    )
    parser.add_argument(
        "--doc",
        action="store_true",
        default=None,
        help="write docs/vs_torch.md and .png (default: unless --quick)",
    )
    parser.add_argument("--worker", choices=("horn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "horn":
        return horn_worker(*args.paths)
    if args.worker == "torch":
        return torch_worker(*args.paths, args.rank, args.world, args.threads)
    if args.quick:
        args.runs = 1
        args.epochs = args.epochs or QUICK["epochs"]
        args.limit = args.limit or QUICK["limit"]
    args.epochs = args.epochs or 5
    args.full_runs = args.runs if args.full_runs is None else min(args.full_runs, args.runs)
    write = args.doc if args.doc is not None else not args.quick
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    try:
        import importlib.util

        has_torch = importlib.util.find_spec("torch") is not None
    except ImportError:
        has_torch = False
    if not has_torch:
        print(TORCH_MISSING)
        names = [n for n in names if CONFIGS[n]["kind"] == "horn"]
    OUT.mkdir(parents=True, exist_ok=True)
    tuning = bool(args.seed0 or args.set or args.profile)
    write = write and not tuning
    results_path = OUT / (
        "results-quick.jsonl" if args.quick else "results-tune.jsonl" if tuning else "results.jsonl"
    )
    done = {}
    if args.resume and results_path.exists():
        for line in open(results_path):
            r = json.loads(line)
            if r.get("signature") == signature(args):
                done[(r["config"], r["seed"])] = r
    elif results_path.exists() and not tuning:
        results_path.unlink()
    loads = []
    runs_by_config = {n: [] for n in names}
    for seed in range(args.seed0, args.seed0 + args.runs):
        for name in names:
            if (name, seed) in done:
                result = done[(name, seed)]
            else:
                loads.append(os.getloadavg()[0])
                full = seed < args.seed0 + args.full_runs
                result = run_once(name, CONFIGS[name], seed, args, None if full else args.stop_at)
                if result is None:
                    print(TORCH_MISSING)
                    continue
                with open(results_path, "a") as f:
                    f.write(json.dumps(result) + "\n")
            loads.append(result["load"])
            runs_by_config[name].append(result)
            hit = {t: first_reach(result, t) for t in TARGETS}
            print(
                f"  {name:10} seed {seed}: "
                + "  ".join(
                    f"{t}: {h[0]:.1f}s/{h[1] / 1e6:.0f}MB" if h else f"{t}: not reached"
                    for t, h in hit.items()
                )
                + (
                    f"  final test {result['final_test_accuracy']:.4f}  "
                    if result.get("full_budget", True)
                    else f"  stopped at {args.stop_at}  "
                )
                + f"{ms_per_step(result):.1f} ms/step  {result['train_s']:.0f}s train, "
                f"{result['wall_s']:.0f}s wall, load {result['load']:.1f}",
                flush=True,
            )
    runs_by_config = {n: r for n, r in runs_by_config.items() if r}
    rows = [summarise(n, r) for n, r in runs_by_config.items()]
    text, verdicts = table(rows), targets(rows)
    print(text)
    print(verdicts)
    if write and rows:
        elapsed = sum(r["wall_s"] for runs in runs_by_config.values() for r in runs)
        write_doc(rows, runs_by_config, args, loads, elapsed)
        print(f"wrote {DOCS / 'vs_torch.md'} and {DOCS / 'vs_torch.png'}")


if __name__ == "__main__":
    sys.exit(main())
