"""Ensemble compression (EC-DNN, Sun et al., arXiv 1606.00575).

Groups train independently. Every ``global_every`` rounds (a round is ``local_steps``
steps) and at the end of training, the groups' models are combined by averaging
their **outputs**, and the ensemble is compressed back into each group's model by
distillation (:mod:`horn.distill`). Groups then go on from their compressed models,
so the members stay diverse.

Teachers (``teacher_data``), with G groups, C classes, P parameters:

- "shared": every rank holds the same N distillation inputs; each member's outputs
  on them are summed by one Allreduce of N*C + 1 floats (the +1 carries the weight
  sum): ``4 * 2 (G-1)/G * (N C + 1)`` bytes per rank, whatever the model size.
  With ``compress`` (fp16 | bf16 | int8) each member's weighted outputs go out in the
  codec instead (:class:`horn.barriers.compress.CompressedWeightedMean`): one
  Allgatherv of ``(G-1) (4 + 2 N C)`` (fp16/bf16) or ``(G-1) (4 + N C + 4 ceil(N C /
  B))`` (int8) bytes per rank, every rank decoding every member's in group order, so
  the teacher is the same on every rank; its rows are renormalised to sum to 1.
- "local" (the paper's): members' flat parameters are exchanged once (Allgather,
  ``4 (G-1) (P + 1)`` bytes per rank) and every group evaluates the ensemble on N
  rows of its own shard.

Member weights are 1 (EC-DNN) or each member's validation accuracy ("generalized
ensemble"). After the last barrier rank 0, which saves and reports the run, receives the
final model: the compressed model best on validation (``final = "compressed"``) or
every member (``"ensemble"``), one message per model; other ranks keep their own. The student starts from the group's own model, or from the parameter
average (``student = "average"``, FedDF-like). With sub-network groups (workers > 1)
the rounds inside a group are SubnetSync's: worker w distills its sub-network on its
share of the rows, and the group reassembles its parent (one Allgatherv).
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from horn.accuracy import accuracy
from horn.backends.base import CODECS
from horn.barriers.average import average
from horn.barriers.base import PeerSync
from horn.barriers.compress import CompressedWeightedMean
from horn.barriers.registry import register_strategy
from horn.data import load_features
from horn.distill import DistillBatches, DistillLoss, distill, soft_outputs
from horn.ensemble_model import Ensemble
from horn.errors import HornError
from horn.jobs import opt
from horn.model import Model

_STREAM = 0xEC  # seeds the distillation rows and batch orders apart from training's


@dataclass(frozen=True)
class EnsembleSettings:
    """``[parallel.ensemble]``: how the groups' outputs are combined and distilled."""

    FORMERLY = {
        k: k
        for k in (
            "teacher_data",
            "distill_size",
            "distill_file",
            "distill_steps",
            "distill_batch",
            "distill_lr",
            "temperature",
            "alpha",
            "student",
            "final",
            "ensemble_weights",
        )
    }
    teacher_data: str = opt("shared", str, ("shared", "local"))
    distill_size: int = opt(2048, int, lo=1)
    distill_file: str = opt(None, str, nullable=True, path=True)
    distill_steps: int = opt(200, int, lo=1)
    distill_batch: int = opt(0, int, lo=0)  # 0: train.batch_size
    distill_lr: float = opt(0.0, float, lo=0.0)  # 0: train.lr
    temperature: float = opt(2.0, float, lo=0.01, hi=100.0)  # as softmax_cross_entropy's
    alpha: float = opt(0.5, float, lo=0.0, hi=1.0, hi_open=True)
    student: str = opt("local", str, ("local", "average"))
    final: str = opt("compressed", str, ("compressed", "ensemble"))
    ensemble_weights: str = opt("average", str, ("average", "validation"))
    compress: str = opt("none", str, ("none", *CODECS))  # the shared teacher's outputs
    block: int = opt(256, int, lo=1, hi=1 << 24)  # int8: values per scale

    def check(self, parallel, where):
        if self.compress != "none" and self.teacher_data != "shared":
            raise HornError(
                f"{where('compress')}: compresses the shared teacher's outputs; "
                f"teacher_data = {self.teacher_data!r} exchanges parameters, not outputs"
            )
        if self.distill_file is not None and self.teacher_data != "shared":
            raise HornError(
                f"{where('distill_file')}: needs teacher_data = 'shared' (the local "
                f"teacher distills on each group's own shard), found "
                f"{self.teacher_data!r}"
            )
        subnet = parallel.of("subnet")
        for key, phase in (("warmup_steps", "warm-up"), ("cooldown_steps", "cool-down")):
            if parallel.workers > 1 and getattr(subnet, key):
                raise HornError(
                    f"{where(key, 'subnet')}: sub-network {phase} is not "
                    f"combined with barrier = 'ensemble'"
                )


def preview(setup, settings, workers):
    """The checks the ranks make: the loss, and the distillation file when one is named
    (no models besides the parent: the student is it)."""
    check_loss(setup)
    if settings.teacher_data == "shared":
        distill_source(setup, settings)
    return []


@register_strategy("ensemble", EnsembleSettings, preview=preview)
def build(setup, settings, inner):
    return EnsembleSync(setup, settings, inner)


def check_loss(setup):
    loss = setup.model.loss
    if not loss.predicts_probabilities:
        raise HornError(
            f"{setup.source}: parallel.barrier = 'ensemble' distills class "
            f"probabilities: model.loss ({loss.spec()['type']}) does not "
            f"predict them (Loss.predicts_probabilities); use "
            f"softmax_cross_entropy"
        )


class EnsembleSync(PeerSync):
    """``setup.data`` is the whole data set (validation split, shared inputs),
    ``setup.local`` this group's shard; ``inner`` the SubnetSync of a group of several
    workers, or None."""

    def __init__(self, setup, settings, inner=None):
        peer, model = setup.peer, setup.model
        super().__init__(peer)
        if peer.groups < 2:
            raise HornError(
                f"{setup.source}: parallel.barrier = 'ensemble' needs at least 2 "
                f"groups; the layout has {peer.groups}"
            )
        check_loss(setup)
        p = settings
        self.model, self.inner, self.make_optimizer = model, inner, setup.make_optimizer
        self.p, self.total_steps, self.seed = p, setup.total_steps, setup.seed
        self.local_steps, self.global_every = setup.local_steps, setup.global_every
        self.val, self.local = (setup.data.x_val, setup.data.y_val), setup.local
        self.loss = DistillLoss(p.alpha, p.temperature)
        self.batch = p.distill_batch or setup.batch_size
        self.lr = p.distill_lr or setup.lr
        if p.teacher_data == "shared":
            self.teacher = SharedTeacher(
                peer, shared_inputs(setup, settings), p.temperature, p.compress, p.block, model
            )
        else:
            self.teacher = LocalTeacher(
                peer, setup.local, p.distill_size, p.temperature, self.seed, model
            )
        self.round = self.barrier = 0
        self.final = None  # the model training ends with, once the last barrier is done
        self._records = []

    # ---- the group's model: its parent with sub-network groups ---------------------
    @property
    def member(self):
        return self.inner.parent if self.inner else self.model

    @property
    def student(self):
        return self.inner.model if self.inner else self.model

    def trainee(self, model, optimizer):
        return self.inner.trainee(model, optimizer) if self.inner else (model, optimizer)

    def eval_model(self, model):
        """The group's model; after the last barrier, on rank 0, the final model."""
        return self.final if self.final is not None else self.member

    def records(self):
        inner = self.inner.records() if self.inner else self.peer.drain_records()
        records, self._records = self._records + inner, []
        return records

    def checkpoint_buffers(self, model, optimizer):
        if self.inner:
            return self.inner.checkpoint_buffers(model, optimizer)
        return super().checkpoint_buffers(model, optimizer)

    def checkpoint_meta(self):
        meta = {"round": self.round, "barrier": self.barrier}
        return {**meta, "inner": self.inner.checkpoint_meta()} if self.inner else meta

    def restore_meta(self, meta):
        self.round, self.barrier = meta["round"], meta["barrier"]
        if self.inner:
            self.inner.restore_meta(meta["inner"])

    # ---- barriers ------------------------------------------------------------------
    def after_step(self, step):
        if self.inner:
            self.inner.after_step(step)
        done = step + 1
        if not self.is_boundary(done, self.local_steps, self.total_steps):
            return
        self.round += 1
        if self.round % self.global_every == 0 or done == self.total_steps:
            self._records.append(self._ensemble_step(done))
            self.barrier += 1
            self.peer.sync()
        self.boundary_at = done  # groups do not talk between barriers: a checkpoint may go here

    def _ensemble_step(self, done):
        """One barrier; returns its metrics record. ``bytes`` are what the algorithm
        moved from this rank, ``metric_bytes_sent`` what measuring it cost on top."""
        member, tally = self.member, _Tally(self.peer)
        x_val, y_val = self.val
        val_probs = member.predict(x_val)
        member_acc = accuracy(val_probs, y_val)
        weight = member_acc if self.p.ensemble_weights == "validation" else 1.0
        record = {
            "kind": "barrier",
            "barrier": self.barrier,
            "step": done,
            "teacher_data": self.p.teacher_data,
        }
        if done == self.total_steps and self.p.final == "ensemble":
            return self._keep_ensemble(record, member, member_acc, tally)
        start = time.perf_counter()
        x, teacher, labels = self.teacher.targets(member, weight, self.barrier)
        record["teacher_s"] = time.perf_counter() - start
        bytes_ = tally.take()
        ensemble_acc = self.teacher.ensemble_accuracy(val_probs, weight, x_val, y_val)
        metric_bytes = tally.take()
        start = time.perf_counter()
        record["distill_loss"] = self._compress(member, x, teacher, labels)
        record["distill_s"] = time.perf_counter() - start
        bytes_ += tally.take()
        accs = self._gather([member_acc, member.accuracy(x_val, y_val)])
        metric_bytes += tally.take()
        if done == self.total_steps:
            record["final_group"] = winner = int(np.argmax(accs[:, 1]))
            params = self._to_root(member, [winner])
            if params is not None:
                self.final = Model.from_spec(member.spec(), member.backend, initialize_params=False)
                self.final.params[...] = self.final.backend.asarray(params[0])
            bytes_ += tally.take()
        record.update(
            member_val_accuracy=accs[:, 0].tolist(),
            ensemble_val_accuracy=ensemble_acc,
            compressed_val_accuracy=accs[:, 1].tolist(),
            bytes_sent=bytes_,
            metric_bytes_sent=metric_bytes,
        )
        return record

    def _compress(self, member, x, teacher, labels):
        """Distill the teacher into the group's student (its model, or the parameter
        average); returns the first and last distillation loss."""
        p = self.p
        if p.student == "average":
            self.teacher.average(member)
            if self.inner:
                self.inner.refresh()
        student = self.student
        rng = np.random.default_rng(
            (self.seed, _STREAM, self.barrier, self.peer.group, self.peer.worker)
        )
        own = (self.local.x_train, self.local.y_train) if labels is None and p.alpha else None
        batches = DistillBatches(student.backend, x, teacher, self.batch, rng, labels, own)
        losses = distill(
            student, self.make_optimizer(student), self.loss, batches, p.distill_steps, self.lr
        )
        if self.inner:
            self.inner.commit()
        return list(losses)

    def _keep_ensemble(self, record, member, member_acc, tally):
        """The last barrier of ``final = "ensemble"``: every member goes to rank 0."""
        accs = self._gather([member_acc])
        record.update(member_val_accuracy=accs[:, 0].tolist(), metric_bytes_sent=tally.take())
        params = self._to_root(member, range(self.peer.groups))
        record["bytes_sent"] = tally.take()
        if params is not None:
            weights = accs[:, 0] if self.p.ensemble_weights == "validation" else None
            self.final = Ensemble.from_flat(member.spec(), params, weights, member.backend)
            record["ensemble_val_accuracy"] = self.final.accuracy(*self.val)
        return record

    def _gather(self, values):
        """Every group's ``values`` (metrics), one row per group."""
        send = np.asarray(values, np.float64)
        recv = np.empty((self.peer.groups, len(values)), np.float64)
        self.peer.allgather(send, recv, "cross")
        return recv

    def _to_root(self, member, groups):
        """The flat parameters of ``groups``' models on world rank 0, which saves and
        reports the final model (None elsewhere): each group's first worker sends its
        model to rank 0 once, in one superstep."""
        peer, host = self.peer, member.backend.to_host
        if peer.worker == 0 and peer.group in groups and peer.rank != 0:
            member.backend.synchronize()
            peer.send(0, host(member.params))
        peer.sync()
        if peer.rank != 0:
            return None
        return [
            host(member.params) if g == peer.group else peer.received(g * peer.workers)[0]
            for g in groups
        ]


class _Tally:
    """Bytes this rank sent since the last ``take``."""

    def __init__(self, peer):
        self.peer, self.mark = peer, peer.bytes_sent_total

    def take(self):
        spent, self.mark = self.peer.bytes_sent_total - self.mark, self.peer.bytes_sent_total
        return spent


# ---- teachers --------------------------------------------------------------------
def shared_inputs(setup, settings):
    """This rank's share of the distillation inputs every rank holds: a seeded sample of
    ``distill_size`` rows of the training inputs or of ``distill_file`` (scaled like the
    training data), split across a group's workers."""
    p, peer = settings, setup.peer
    source = distill_source(setup, settings)
    rng = np.random.default_rng((setup.seed, _STREAM))
    rows = np.sort(rng.choice(len(source), min(p.distill_size, len(source)), replace=False))
    return source[np.array_split(rows, peer.workers)[peer.worker]]


def distill_source(setup, settings):
    """The rows distillation inputs are drawn from: the training inputs, or
    ``distill_file`` scaled like them (checked: it must fit the model's inputs)."""
    data = setup.data
    if settings.distill_file is None:
        return data.x_train
    path = Path(setup.base_dir or ".") / settings.distill_file
    source = data.scaler.apply(load_features(path, setup.model.in_features), str(path))
    if source.shape[1] != data.features:
        raise HornError(
            f"{path}: parallel.ensemble.distill_file has {source.shape[1]} features per "
            f"row, the data ({data.name}) has {data.features}"
        )
    return source


def weighted_mean(peer, outputs, weight):
    """``sum_g w_g outputs_g / sum_g w_g`` over the groups: one Allreduce of
    ``outputs.size + 1`` float32 (the last entry sums the weights)."""
    buf = np.empty(outputs.size + 1, np.float32)
    buf[:-1] = outputs.reshape(-1)
    buf[:-1] *= weight
    buf[-1] = weight
    peer.allreduce_sum(buf, "cross")
    return buf[:-1].reshape(outputs.shape) / buf[-1]


def gather_members(peer, member, weight):
    """Every group's flat parameters and weight, ``(G x P, G)``: one Allgather."""
    send = np.empty(member.size + 1, np.float32)
    send[:-1] = member.backend.to_host(member.params)
    send[-1] = weight
    recv = np.empty((peer.groups, member.size + 1), np.float32)
    peer.allgather(send, recv, "cross")
    return recv[:, :-1], recv[:, -1]


class SharedTeacher:
    """The same inputs on every rank; the ensemble's outputs on them are one Allreduce
    (or, with a codec, one Allgatherv of the compressed outputs)."""

    def __init__(self, peer, x, temperature, codec="none", block=256, model=None):
        self.peer, self.x, self.temperature = peer, x, temperature
        self.compressed = None
        if codec != "none":
            n = len(x) * model.out_features
            self.compressed = CompressedWeightedMean(peer, model.backend, codec, block, "cross", n)

    def targets(self, member, weight, barrier):
        """``(inputs, teacher probabilities, labels or None)`` to distill this rank on."""
        outputs = np.empty((len(self.x), member.out_features), np.float32)
        soft_outputs(member, self.x, self.temperature, outputs)
        if self.compressed is None:
            return self.x, weighted_mean(self.peer, outputs, weight), None
        teacher = self.compressed(outputs, weight)
        teacher /= teacher.sum(axis=1, keepdims=True)  # a distribution again
        return self.x, teacher, None

    def ensemble_accuracy(self, probs, weight, x, y):
        """The ensemble's accuracy on (x, y), given this member's probabilities there."""
        return accuracy(weighted_mean(self.peer, probs, weight), y)

    def average(self, member):
        """Replace the member by the groups' parameter average (one Allreduce)."""
        average(self.peer, member, None, False, "cross")


class LocalTeacher:
    """Each group distills on its own shard: the members' parameters are gathered once
    and every rank evaluates the ensemble on ``size`` rows of its group's shard (split
    across the group's workers), drawn afresh at each barrier."""

    def __init__(self, peer, local, size, temperature, seed, model):
        self.peer, self.local, self.size = peer, local, size
        self.temperature, self.seed = temperature, seed
        self.scratch = Model.from_spec(model.spec(), model.backend, initialize_params=False)
        self.params = self.weights = None

    def targets(self, member, weight, barrier):
        self.params, self.weights = gather_members(self.peer, member, weight)
        n = len(self.local.y_train)
        rng = np.random.default_rng((self.seed, _STREAM, barrier, self.peer.group))
        rows = np.sort(rng.choice(n, min(self.size, n), replace=False))
        rows = np.array_split(rows, self.peer.workers)[self.peer.worker]
        x = self.local.x_train[rows]
        return x, self._mean(x, self.temperature), self.local.y_train[rows]

    def _mean(self, x, temperature):
        total = np.zeros((len(x), self.scratch.out_features), np.float32)
        out = np.empty_like(total)
        for params, weight in zip(self.params, self.weights):
            self.scratch.params[...] = self.scratch.backend.asarray(params)
            total += weight * soft_outputs(self.scratch, x, temperature, out)
        return total / self.weights.sum()

    def ensemble_accuracy(self, probs, weight, x, y):
        return accuracy(self._mean(x, 1.0), y)

    def average(self, member):
        """Replace the member by the gathered parameters' mean (no further bytes)."""
        member.params[...] = member.backend.asarray(self.params.mean(axis=0))
