"""Set up and run one job: threads, backend, data, model, run directory, artefacts."""

import dataclasses
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from horn.backends import get_backend
from horn.batches import BatchStream
from horn.data import load_dataset
from horn.errors import HornError
from horn.jobs import model_spec, write_resolved
from horn.metrics import MetricsLog, plot_curves, print_progress
from horn.model import Model
from horn.optim import make_optimizer
from horn.barriers import make_sync
from horn.parallel import derive_seed, local_ranks, shard_indices
from horn.schedules import make_schedule
from horn.trainer import Trainer, total_steps


def configure_threads(threads, local_ranks=1):
    """BLAS and Numba threads for this process: ``threads`` or a fair share of the cores."""
    from threadpoolctl import threadpool_limits

    n = threads or max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    threadpool_limits(limits=n, user_api="blas")
    try:
        from horn.backends.numba_backend import set_threads
        set_threads(n)
    except ImportError:
        pass
    return n


def make_run_dir(log_dir, name):
    """``<log_dir>/<name>-<YYYYmmdd-HHMMSS>``, suffixed when it exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(log_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise HornError(f"log.dir: cannot create run directory {path}: {exc}") from None
    return path


def check_fit(job, data, model):
    """The model's input and output widths must match the data."""
    if job.model.inputs is not None and job.model.inputs != data.features:
        raise HornError(f"{job.source}: model.inputs is {job.model.inputs} but the data "
                        f"({data.name}) has {data.features} features")
    if model.out_features != data.classes:
        last = max(i for i, spec in enumerate(job.model.layers) if "units" in spec) \
            if any("units" in spec for spec in job.model.layers) else len(job.model.layers) - 1
        raise HornError(f"{job.source}: model.layers[{last}] makes the model output "
                        f"{model.out_features} values but the data ({data.name}) has "
                        f"{data.classes} classes: the last layer must output one per class")


def scaler_meta(scaler):
    return {"kind": scaler.kind, "offset": np.asarray(scaler.offset).tolist(),
            "scale": np.asarray(scaler.scale).tolist()}


def build(job, data, backend, group=0, worker=0):
    """The model, optimizer, schedule and batch stream of one rank of a job."""
    seed = job.train.seed
    model = Model.from_spec(model_spec(job, data.features), backend, seed=seed)
    model.mask_seed = derive_seed(seed, group, worker)
    stream = BatchStream(data.x_train, data.y_train, job.train.batch_size,
                         derive_seed(seed, group, worker), backend)
    steps = total_steps(job.train, stream.per_epoch)
    return model, make_optimizer(job.train, model), make_schedule(job.train, steps), stream, steps


def shard(data, peer, seed):
    """This rank's group's disjoint part of the training set."""
    if peer is None or peer.groups == 1:
        return data
    idx = shard_indices(len(data.y_train), peer.groups, peer.group, seed)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


def run_job(job, progress=True, run_dir=None, peer=None):
    """Train ``job`` on this rank (a world of one without a peer).

    Rank 0 writes the run directory and returns a dict with test_accuracy and
    run_dir; other ranks return None.
    """
    root = peer is None or peer.rank == 0
    group, worker = (peer.group, peer.worker) if peer else (0, 0)
    threads = configure_threads(job.train.threads, local_ranks())
    backend = get_backend(job.train.backend)
    data = load_dataset(job.data, base_dir=job.base_dir)
    local = shard(data, peer, job.train.seed)
    model, optimizer, schedule, stream, steps = build(job, local, backend, group, worker)
    check_fit(job, data, model)
    sync = make_sync(job, peer, model, optimizer, steps,
                     lambda m: make_optimizer(job.train, m))
    show = root and progress and job.log.progress != "none"
    if root:
        run_dir = Path(run_dir) if run_dir else make_run_dir(job.log.dir, job.name)
        write_resolved(job, run_dir / "job.json")
    if peer is not None and show:
        print_progress(f"horn: {peer.layout_text()}", show)
    print_progress(f"horn: {job.name}: {data.name} {len(local.y_train)}/{len(data.y_val)}/"
                   f"{len(data.y_test)} train (per group)/val/test, {model.num_params:,} "
                   f"parameters, backend {backend.name}, {threads} thread(s), {steps} steps", show)
    metrics = MetricsLog(run_dir / "metrics.jsonl" if root else None)
    start = time.perf_counter()
    try:
        Trainer(model, optimizer, schedule, stream, data, metrics, steps, sync=sync,
                eval_every=job.train.eval_every, progress=show,
                rank_name=f"rank {peer.rank}" if peer else "").run()
        final_model = sync.eval_model(model)
        final = {"final": True, "test_accuracy": final_model.accuracy(data.x_test, data.y_test),
                 "val_accuracy": final_model.accuracy(data.x_val, data.y_val),
                 "time_s": time.perf_counter() - start, "steps": steps}
        if peer is not None:
            final["bytes_sent_rank0"] = peer.bytes_sent_total
        metrics.write(final)
    finally:
        metrics.close()
    if not root:
        return None
    final_model.save(run_dir / "model.npz", meta={"job": job.to_dict(), "classes": data.classes,
                                                  "scaler": scaler_meta(data.scaler)})
    if job.log.plot:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curve.png", job.name)
    return {**final, "run_dir": str(run_dir)}
