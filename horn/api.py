"""``horn.run``: train a job from Python, the way ``horn run`` does from the shell."""

import copy
from dataclasses import dataclass
from pathlib import Path

from horn.errors import HornError, Preempted


@dataclass
class RunResult:
    """What a run leaves: its epoch records, its final model, its run directory.

    ``final`` is the last record of metrics.jsonl (test_accuracy, val_accuracy, time_s,
    best_epoch...). Under mpirun every rank gets a result; only rank 0 writes the run
    directory, so elsewhere ``run_dir`` and ``final`` are None.
    """

    history: list
    model: object
    run_dir: Path | None
    final: dict | None


def run(job, overrides=(), progress=False):
    """Train ``job``: a job file's path, or a dict shaped like one (as TOML would parse).

    ``overrides`` are ``--set`` strings (``"train.lr=0.05"``). Under mpirun, call it on
    every rank (``mpirun -n 4 python script.py``): the ranks train together. A stop
    signal ends the run at a round boundary with a checkpoint and raises
    :class:`horn.errors.Preempted`.
    """
    from horn.jobs import apply_override, job_from_dict, load_job
    from horn.parallel import create_peer
    from horn.resume import install_preemption_handlers
    from horn.training_run import run_job

    if isinstance(job, dict):
        doc = copy.deepcopy(job)
        for item in overrides:
            apply_override(doc, item)
        resolved = job_from_dict(doc, "<dict>", default_name="job")
    elif isinstance(job, (str, Path)):
        resolved = load_job(job, list(overrides))
    else:
        raise HornError(f"horn.run: expected a job file path or a dict, found {type(job).__name__}")
    install_preemption_handlers()  # a stop signal ends at a round boundary, as for horn run
    peer = create_peer(resolved)
    out = run_job(resolved, progress=progress, peer=peer, every_rank=True)
    if peer is not None:  # a sweep calls run in a loop: free this run's communicators
        peer.close()
    if out is None or out.get("preempted"):  # ranks other than 0 return None then
        raise Preempted(out and out["step"], out and out["run_dir"])
    run_dir = out.pop("run_dir")
    history, model = out.pop("history"), out.pop("model")
    return RunResult(history, model, Path(run_dir) if run_dir else None, out if run_dir else None)
