"""A run of one job on one rank, as an object: set up, start or resume, train, save.

:func:`horn.runner.prepare` builds and checks everything a step needs; :class:`Run`
adds what a run owns around the training loop: its directory, metrics, checkpoints,
preemption, early stopping and the artefacts written at the end.
"""

import os
from pathlib import Path

from horn.checkpoint import Checkpointer, load_latest
from horn.early_stop import BestTracker, agree
from horn.ensemble_model import load_predictor
from horn.errors import HornError
from horn.jobs import early_stop_settings, write_resolved
from horn.metrics import MetricsLog, print_progress
from horn.plots import plot_curves
from horn.resume import Preemption, RunState, parameter_shapes
from horn.runner import make_run_dir, prepare, scaler_meta
from horn.trainer import EpochCounters, Trainer


class Run:
    """One rank's part of a job (a world of one without a peer). Rank 0 owns the run
    directory; every rank trains."""

    def __init__(self, job, peer=None, run_dir=None, progress=True):
        self.job, self.peer = job, peer
        self.root = peer is None or peer.rank == 0
        self.run_dir = Path(run_dir) if run_dir else None
        self.prepared = prepare(job, peer)
        self.show = self.root and progress and job.log.progress != "none"
        self.early_stop = early_stop_settings(job.train)
        if self.early_stop and not len(self.prepared.data.y_val):
            raise HornError(
                f"{job.source}: train.early_stop needs a validation set, but "
                f"data.val_fraction is {job.data.val_fraction}"
            )
        p = self.prepared
        self.state = RunState(p.model, p.optimizer, p.stream, p.sync, peer)
        self.layout = {
            "world": peer.size if peer else 1,
            "groups": peer.groups if peer else 1,
            "workers": peer.workers if peer else 1,
        }
        self.best = (
            BestTracker(self.early_stop.patience, self.early_stop.min_delta)
            if self.early_stop
            else BestTracker()
        )
        self.preemption = Preemption(peer)
        self.rounds = 0  # barriers completed: a checkpoint counts them
        self.resumed = False

    # ---- start -------------------------------------------------------------------
    def begin(self):
        """A new run: its directory and resolved job (rank 0). Returns where training
        starts: ``(step, epoch counters, elapsed seconds, metrics offset)``."""
        if self.root:
            self.run_dir = (self.run_dir or make_run_dir(self.job.log.dir, self.job.name)).resolve()
            write_resolved(self.job, self.run_dir / "job.json")
        self._announce()
        return 0, EpochCounters(), 0.0, None

    def resume(self):
        """Go on from ``run_dir``'s newest valid checkpoint (same return as :meth:`begin`)."""
        self._announce()
        manifest, arrays = load_latest(self.run_dir, every=self.job.checkpoint.every)
        step, counters = self.state.restore(
            manifest, arrays, self.layout, str(self.run_dir / "checkpoints" / manifest["file"])
        )
        self.rounds, self.resumed = manifest["round"], True
        self.best.restore(manifest.get("best"))
        print_progress(
            f"horn: resuming {self.run_dir} at step {step} of {self.prepared.steps}", self.show
        )
        return step, counters, manifest.get("time_s", 0.0), manifest["metrics_bytes"]

    def _announce(self):
        p = self.prepared
        if self.root:  # absolute and at once, so `tail -f RUN_DIR/metrics.jsonl` works
            print_progress(f"horn: run directory {self.run_dir.resolve()}", self.show)
        if self.peer is not None and self.show:
            print_progress(f"horn: {self.peer.layout_text()}", self.show)
        print_progress(
            f"horn: {self.job.name}: {p.data.name} {len(p.local.y_train)}/"
            f"{len(p.data.y_val)}/{len(p.data.y_test)} train (per group)/val/test, "
            f"{p.model.num_params:,} parameters, backend {p.backend.name}, "
            f"{p.threads} thread(s), {p.steps} steps",
            self.show,
        )

    # ---- train -------------------------------------------------------------------
    def train(self, start):
        """Train from ``start`` (what begin/resume returned). Returns the final record
        plus run_dir, history and model (rank 0), or with a preemption its step."""
        step, counters, elapsed, offset = start
        p = self.prepared
        self.metrics = MetricsLog(
            self.run_dir / "metrics.jsonl" if self.root else None, truncate_to=offset
        )
        self.checkpointer = Checkpointer(self.run_dir, self.peer, self.job.checkpoint.keep_last)
        if self.peer is not None:
            self.peer.restart_superstep_clock()  # superstep 0 starts with training
        try:
            trainer = Trainer(
                p.model,
                p.optimizer,
                p.schedule,
                p.stream,
                p.data,
                self.metrics,
                p.steps,
                sync=p.sync,
                eval_every=self.job.train.eval_every,
                eval_steps=self.job.train.eval_steps,
                progress=self.show,
                rank_name=f"rank {self.peer.rank}" if self.peer else "",
                on_round_end=self._on_round_end,
                on_evaluated=self._on_evaluated,
                skip_bad_batches=self.job.train.on_nan == "skip_batch",
            )
            if self.resumed and self.early_stop:  # decided just before the checkpoint
                trainer.stop_requested = agree(self.peer, self.root and self.best.exhausted)
            history = trainer.run(step, counters, elapsed)
            if trainer.stopped_at is not None:
                return {"preempted": True, "step": trainer.stopped_at, "run_dir": str(self.run_dir)}
            model = p.sync.eval_model(p.model)
            final = self._final_record(trainer, history, model)
            self.metrics.write(final)
        finally:
            self.metrics.close()
        return {
            **final,
            "run_dir": str(self.run_dir) if self.root else None,
            "history": history,
            "model": model,
        }

    def _on_round_end(self, done, counters, elapsed_s):
        """True on every rank when the run must stop (preemption); checkpoints here."""
        self.rounds += 1
        stop = self.preemption.agreed()
        every, steps = self.job.checkpoint.every, self.prepared.steps
        if stop or (every and (self.rounds % every == 0 or done == steps)):
            for record in self.prepared.sync.records():  # what the metrics offset covers
                self.metrics.write(record)
            own, shared, meta = self.state.snapshot(done, counters)
            self.checkpointer.save(
                done,
                own,
                meta,
                shared,
                {
                    "layout": self.layout,
                    "job_digest": self.job.digest(),
                    "round": self.rounds,
                    "parameters": parameter_shapes(self.prepared.model),
                    "metrics_bytes": self.metrics.tell(),
                    "time_s": elapsed_s,
                    "best": self.best.state(),
                },
            )
        return stop

    def _on_evaluated(self, record, val_model):
        """Keep the best model (rank 0 decides from its validation accuracy); True on
        every rank when early stopping says stop."""
        if self.root and self.best.update(record["epoch"], record["val_accuracy"]):
            self.save_model(
                val_model,
                "best.npz",
                {"epoch": record["epoch"], "val_accuracy": record["val_accuracy"]},
            )
        return self.early_stop is not None and agree(self.peer, self.root and self.best.exhausted)

    def _final_record(self, trainer, history, model):
        data = self.prepared.data
        final = {
            "kind": "final",
            "test_accuracy": model.accuracy(data.x_test, data.y_test),
            "val_accuracy": model.accuracy(data.x_val, data.y_val),
            "time_s": trainer.elapsed_s(),
            "steps": trainer.early_stopped_at or trainer.total_steps,
        }
        if trainer.early_stopped_at is not None:
            per_epoch = self.prepared.stream.per_epoch  # history is empty if it stopped at once
            final["stopped_early_at_epoch"] = (
                history[-1]["epoch"] if history else -(-trainer.early_stopped_at // per_epoch)
            )
        if self.root and self.best.best_epoch is not None:
            best, _ = load_predictor(self.run_dir / "best.npz", self.prepared.backend.name)
            final.update(
                best_epoch=self.best.best_epoch,
                best_val_accuracy=self.best.best,
                best_test_accuracy=best.accuracy(data.x_test, data.y_test),
            )
        final.update(self.prepared.sync.byte_totals())
        return final

    # ---- save --------------------------------------------------------------------
    def finish(self, result):
        """Rank 0 writes the model (and the curve); ``result`` is what :meth:`train` gave."""
        if self.root and not result.get("preempted"):
            self.save_model(result["model"], "model.npz")
            if self.job.log.plot:
                plot_curves(
                    self.run_dir / "metrics.jsonl", self.run_dir / "curve.png", self.job.name
                )
        return result

    def save_model(self, model, name, extra=None):
        """``model`` with what eval/predict need (the job, classes, input scaling), written
        whole or not at all (a kill while writing leaves the previous file)."""
        data, path = self.prepared.data, self.run_dir / name
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        model.save(
            tmp,
            meta={
                "job": self.job.to_dict(),
                "classes": data.classes,
                "scaler": scaler_meta(data.scaler),
                **(extra or {}),
            },
        )
        os.replace(tmp, path)


def run_job(job, progress=True, run_dir=None, peer=None, resume=False, every_rank=False):
    """Train ``job`` on this rank (a world of one without a peer).

    With ``resume``, ``run_dir`` is an earlier run's directory and training goes on
    from its newest valid checkpoint. Rank 0 returns the final record plus run_dir,
    history (the epoch records) and model; other ranks return None, or with
    ``every_rank`` their history and model (run_dir None).
    """
    run = Run(job, peer, run_dir, progress)
    result = run.finish(run.train(run.resume() if resume else run.begin()))
    if run.root:
        return result
    if result.get("preempted") or not every_rank:
        return None
    return {"history": result["history"], "model": result["model"], "run_dir": None}
