"""Set up one job on one rank: threads, backend, data, model, strategy, and every
check made before training (:func:`prepare`); :mod:`horn.training_run` runs it."""

import dataclasses
import os
import shlex
from datetime import datetime
from pathlib import Path

import numpy as np

from horn.backends import get_backend
from horn.barriers import Setup, make_sync, preview_models
from horn.batches import BatchStream
from horn.data import load_dataset
from horn.errors import HornError
from horn.jobs import model_spec
from horn.layer import as_shape, shape_size
from horn.memory import Estimate, check_fits, estimate
from horn.model import Model
from horn.optim import make_optimizer
from horn.parallel import derive_seed, dirichlet_shard_indices, local_ranks, shard_indices
from horn.registry import resolve
from horn.schedules import make_schedule
from horn.trainer import total_steps


def configure_threads(threads, local_ranks=1):
    """BLAS and Numba threads for this process: ``threads`` or a fair share of the cores."""
    from threadpoolctl import threadpool_limits

    n = threads or _threads_from_env() or max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    threadpool_limits(limits=n, user_api="blas")
    try:
        from horn.backends.numba_backend import set_threads

        set_threads(n)
    except ImportError:
        pass
    return n


def _threads_from_env():
    """``HORN_THREADS``: the share a launcher computed (``horn cluster`` sets it, since a
    simulated host's rank sees one local rank but shares the cores with the whole cluster)."""
    text = os.environ.get("HORN_THREADS", "")
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise HornError(f"HORN_THREADS: expected a positive integer, found '{text}'")
    return int(text)


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


def input_shape(job, data):
    """One sample's shape as the model takes it; data always travels as flat rows.

    ``model.inputs`` when the job sets it (an int, or a list such as [1, 28, 28]; its
    size must be the data's width); else the data's image shape (C, H, W) when the
    first layer that states a sample rank needs images (``input_rank = 3``: conv2d, the
    pools; layers of any rank before it, such as batch_norm or relu, take what it
    takes); else flat vectors.
    """
    layers = job.model.layers
    classes = [
        resolve(s["type"], f"{job.locate('model', 'layers', i)}: model.layers[{i}]")
        for i, s in enumerate(layers)
    ]
    inputs = job.model.inputs
    if inputs is not None:
        shape = as_shape(inputs)
        if shape is None or shape_size(shape) != data.features:
            raise HornError(
                f"{job.locate('model', 'inputs')}: model.inputs is {inputs} but "
                f"the data ({data.name}) has {data.features} features"
            )
        wants = classes[0].input_rank
        if wants is not None and wants != (1 if isinstance(shape, int) else len(shape)):
            raise HornError(
                f"{job.locate('model', 'inputs')}: model.inputs = {inputs} gives samples "
                f"of shape {shape}, but model.layers[0] ({layers[0]['type']}) takes "
                f"samples of {wants} axes"
            )
        return shape
    index, rank = next(
        ((i, cls.input_rank) for i, cls in enumerate(classes) if cls.input_rank is not None),
        (0, None),
    )
    first = layers[index]
    where = f"{job.locate('model', 'layers', index)}: model.layers[{index}]"
    if rank is None or rank == 1:
        return data.features
    shape = data.sample_shape
    if isinstance(shape, tuple) and len(shape) == rank:
        return shape
    axes = {2: "[C, L]", 3: "[C, H, W]"}.get(rank, f"[{rank} sizes]")
    found = (
        f"flat vectors of {data.features} values"
        if isinstance(shape, int)
        else f"samples of shape {shape}"
    )
    raise HornError(
        f"{where} ({first['type']}) takes samples of {rank} axes but the data "
        f"({data.name}) gives {found}; set model.inputs = {axes}"
    )


def check_fit(job, data, model):
    """The model's output must be one value per class of the data."""
    if not isinstance(model.out_features, int):
        raise HornError(
            f"{job.locate('model', 'layers')}: the model outputs samples of shape "
            f"{model.out_features}; end its image layers with flatten or "
            f"global_avg_pool"
        )
    if model.out_features != data.classes:
        sets_width = [i for i, layer in enumerate(model.layers) if layer.partition_role == "split"]
        last = sets_width[-1] if sets_width else len(model.layers) - 1
        raise HornError(
            f"{job.locate('model', 'layers', last)}: model.layers[{last}] makes "
            f"the model output "
            f"{model.out_features} values but the data ({data.name}) has "
            f"{data.classes} classes: the last layer must output one per class"
        )


def scaler_meta(scaler):
    return {
        "kind": scaler.kind,
        "offset": np.asarray(scaler.offset).tolist(),
        "scale": np.asarray(scaler.scale).tolist(),
    }


def build(job, data, backend, group=0, worker=0, spec=None):
    """The model, optimizer, schedule and batch stream of one rank of a job."""
    seed = job.train.seed
    spec = spec or model_spec(job, input_shape(job, data))
    model = Model.from_spec(spec, backend, seed=seed)
    model.mask_seed = derive_seed(seed, group, worker)
    stream = BatchStream(
        data.x_train, data.y_train, job.train.batch_size, derive_seed(seed, group, worker), backend
    )
    steps = total_steps(job.train, stream.per_epoch)
    return model, make_optimizer(job.train, model), make_schedule(job.train, steps), stream, steps


def shard(data, peer, seed, kind="iid", alpha=0.5):
    """This rank's group's disjoint part of the training set: a uniform random share
    (``kind = "iid"``) or a label-skewed one (``"dirichlet"`` with concentration ``alpha``)."""
    if peer is None or peer.groups == 1:
        return data
    if kind == "dirichlet":
        idx = dirichlet_shard_indices(data.y_train, peer.groups, peer.group, alpha, seed)
    else:
        idx = shard_indices(len(data.y_train), peer.groups, peer.group, seed)
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


def check_shards(job, samples, groups):
    """Every group needs a sample of its own (an empty shard has no step to take)."""
    if samples < groups:
        raise HornError(
            f"{job.locate('data')}: {samples} training sample(s) cannot be split into "
            f"parallel.groups = {groups} disjoint shards: expected at least one per group "
            f"(use more data or fewer groups)"
        )


def needed_ranks(parallel):
    """The fewest ranks a job's layout runs on (groups = 0 derives from the world size)."""
    return max(parallel.groups, 1) * parallel.workers


def check_single_process(job, resume=None):
    """One rule with and without mpirun: the job's layout must fit the world, and a
    process not started by mpirun is a world of one (``mpirun -n 1`` refuses the same
    job). So parallel settings are never silently ignored."""
    p, n = job.parallel, needed_ranks(job.parallel)
    if n > 1:
        raise HornError(
            f"{job.locate('parallel')}: parallel.groups = {p.groups} x "
            f"parallel.workers = {p.workers} needs {n} ranks, but this is one "
            f"process (not started by mpirun); run: {launch_command(job, n, resume)} (or "
            f"set parallel.groups = 1 and parallel.workers = 1)"
        )


def launch_command(job, ranks, resume=None):
    """The command line that runs ``job`` (with its --set items) on ``ranks`` ranks;
    with ``resume`` (a run directory), the one that resumes it."""
    sets = [f"--set {shlex.quote(item)}" for _, item in job.overrides]
    what = f"--resume {shlex.quote(str(resume))}" if resume else shlex.quote(job.source)
    return " ".join([f"mpirun --oversubscribe -n {ranks} horn run", what, *sets])


@dataclasses.dataclass
class Prepared:
    """One rank's state before its first step: what ``horn run`` builds and
    ``horn validate`` checks (:func:`prepare` is the only place either does it)."""

    job: object
    threads: int
    backend: object
    data: object
    local: object
    model: Model
    optimizer: object
    schedule: object
    stream: BatchStream
    steps: int
    sync: object
    memory: Estimate
    available: int  # bytes (None: unknown or on the GPU, not checked)
    setup: Setup  # what the strategies were built from (peer None under horn validate)

    def checks(self):
        """What was checked, one ``(name, finding)`` per check, for ``horn validate``."""
        job, data, model = self.job, self.data, self.model
        n = needed_ranks(job.parallel)
        available = (
            "not checked (the GPU backend)"
            if self.backend.name == "cupy"
            else "not checked (MemAvailable unknown)"
            if self.available is None
            else f"{self.available / 2**30:.2f} GiB available"
        )
        return [
            (
                "data",
                f"{data.name}: {len(data.y_train)}/{len(data.y_val)}/{len(data.y_test)} "
                f"train/val/test samples of {data.features} features, {data.classes} "
                f"classes",
            ),
            (
                "model",
                f"{len(job.model.layers)} layers built on samples of shape "
                f"{model.in_features}: {model.num_params:,} parameters, "
                f"{model.out_features} outputs for {data.classes} classes",
            ),
            ("memory", f"about {self.memory.text()} per rank; {available}"),
            (
                "training",
                f"{self.steps} steps of {job.train.batch_size} samples, "
                f"{job.train.optimizer} lr {job.train.lr}, backend {self.backend.name}, "
                f"{self.threads} thread(s)",
            ),
            ("layout", "one process" if n == 1 else f"{n} ranks: {launch_command(job, n)}"),
        ]


def prepare(job, peer=None, single_process_rule=True):
    """Every check ``horn run`` makes before training, in the order it needs them: the
    layout (:func:`check_single_process`), the data opened, the model's memory against
    what is available (before allocating it), the model built on the data's shapes,
    its outputs against the data's classes, the parallel strategy. ``horn validate``
    calls it without a peer (and without the single-process rule) and trains nothing."""
    if peer is None and single_process_rule:
        check_single_process(job)
    group, worker = (peer.group, peer.worker) if peer else (0, 0)
    threads = configure_threads(job.train.threads, local_ranks())
    backend = get_backend(job.train.backend)
    data = load_dataset(job.data, base_dir=job.base_dir)
    check_shards(job, len(data.y_train), peer.groups if peer else job.parallel.groups)
    local = shard(data, peer, job.train.seed, job.parallel.shard, job.parallel.shard_alpha)
    spec = model_spec(job, input_shape(job, local))
    where = job.locate("model", "layers")
    need = estimate(
        job, spec, max(len(data.y_val), len(data.y_test)), local_ranks() if peer else 1, where
    )
    available = None if backend.name == "cupy" else check_fits(need, where)
    model, optimizer, schedule, stream, steps = build(job, local, backend, group, worker, spec)
    check_fit(job, data, model)
    model.check_storable(job.locate("model", "layers"))
    setup = Setup(
        peer,
        model,
        optimizer,
        lambda m: make_optimizer(job.train, m),
        steps,
        job.parallel.local_steps,
        job.parallel.global_every,
        job.train.seed,
        job.train.batch_size,
        job.train.lr,
        job.source,
        job.base_dir,
        data,
        local,
    )
    sync = make_sync(setup, job.parallel)
    return Prepared(
        job,
        threads,
        backend,
        data,
        local,
        model,
        optimizer,
        schedule,
        stream,
        steps,
        sync,
        need,
        available,
        setup,
    )


def rehearse(prepared):
    """One training step (forward, loss, backward; no update) and one evaluation forward
    of 2 training samples through the model and through every model the job's layout trains besides it
    (sub-networks' compact nets of round 0), built as ``horn run`` would build them on
    its ranks: what ``horn validate`` adds to :func:`prepare`, so that a partition that
    does not fit or a layer whose shapes break in its first step fails here, not on
    the cluster. Returns what was stepped, in words."""
    job, local, model = prepared.job, prepared.local, prepared.model
    models = [("the model", model)]
    if needed_ranks(job.parallel) > 1 or job.parallel.groups == 0:  # 0: as many as mpirun runs
        models += preview_models(prepared.setup, job.parallel)
    x = np.ascontiguousarray(local.x_train[:2], model.dtype)
    y = np.asarray(local.y_train[:2])
    for label, each in models:
        for mode, step in (
            ("training", lambda m: m.train_step(m.backend.asarray(x), m.backend.asarray(y))),
            ("evaluation", lambda m: m.predict(x)),  # as validation, test and predict run it
        ):
            try:
                step(each)
            except HornError as exc:
                raise HornError(f"{job.source}: {label}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a layer's own failure, named on one line
                where = "; ".join(getattr(exc, "__notes__", [])) or f"in its first {mode} step"
                raise HornError(
                    f"{job.source}: {label} fails {where} on 2 training samples in {mode}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
    labels = [label for label, _ in models]
    if len(labels) > 3:
        return f"{labels[0]} and {len(labels) - 1} more ({labels[1]} to {labels[-1]})"
    return ", ".join(labels)
