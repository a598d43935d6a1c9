"""Independent sub-network training inside worker groups (HORN-27 / IST).

A round: every worker trains its compact sub-network for ``local_steps`` steps
with no communication; then the group reassembles the parent with one
Allgatherv of the workers' compact blocks. Every rank holds the whole parent, so
the next round's sub-network is gathered locally: no scatter message is needed.

Bytes sent per rank per round (ring Allgatherv): ``4 (W - 1) |theta_w|`` where
``|theta_w| = sum_l |rows_w,l| |cols_w,l| + |cols_w,l|`` is the worker's compact
sub-network (about P/W^2 for hidden-to-hidden layers, P/W for the first and
last), doubled with ``momentum = "keep"``. Model averaging of the parent
sends ``4 * 2 (W - 1)/W * P``. Every ``global_every`` rounds, groups average
their parents across groups (the cross communicator).

Warm-up (``warmup_steps``, the ResIST recipe): the first steps train the
whole parent on every rank, averaged over the world every ``local_steps`` steps
(model averaging, ``4 * 2 (R - 1)/R * P`` bytes per barrier on R ranks), so that
partitioning starts from features the sub-networks can share instead of from
random ones that each worker would pull its own way.

Cool-down (``cooldown_steps``): the last steps train the whole parent again, averaged
the same way, so that the weights between different workers' channels or units --
which no compact net holds in the round that drew them apart -- are fitted together
once the rounds have found the features (a reassembled parent is a sum of compact
nets that never saw each other's inputs).

Compressed (``compress`` = fp16 | bf16 | int8, ``block``): each worker sends its
block's **change since the round began** in the codec, with error feedback, in the
same Allgatherv (messages at aligned offsets: :class:`horn.barriers.compress.Messages`).
Every rank -- the owner too -- gathers each worker's round-start block from the
parent it holds, adds the decoded change and scatters, so all ranks' parents stay
bit-identical. Bytes per rank per round: ``(W - 1) 2 |theta_w|`` (fp16/bf16) or
``(W - 1) (|theta_w| + 4 ceil(|theta_w| / B))`` (int8) instead of ``(W - 1) 4
|theta_w|``. The residual lives over the parent's flat buffer, one per rank: a round
reads and updates only the entries of the worker's own block, so what a partition
dropped this round goes out with the next block that holds the entry. With
``momentum = "keep"`` the optimizer state still travels in fp32.
"""

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from horn.backends.base import CODECS, message_size
from horn.barriers.average import average, mean_and_step
from horn.barriers.base import PeerSync
from horn.barriers.compress import Messages
from horn.barriers.registry import register_strategy
from horn.errors import HornError
from horn.jobs import opt
from horn.model import Model
from horn.parallel import derive_seed
from horn.partition import PARTITION_KINDS, partition
from horn.subnet import SCALE_AT, SCALE_RULES, SubnetLayout, gather, scatter


@dataclass(frozen=True)
class SubnetSettings:
    """``[parallel.subnet]``: how a group of several workers splits its parent."""

    FORMERLY = {
        "partition": "partition",
        "partition_weights": "weights",
        "min_share": "min_share",
        "subnet_scale": "scale",
        "subnet_momentum": "momentum",
        "subnet_scale_at": "scale_at",
        "subnet_warmup_steps": "warmup_steps",
        "dropconnect": "dropconnect",
    }
    partition: str = opt("balanced", str, PARTITION_KINDS)
    weights: list = opt([], list)  # partition = "weighted": one share per worker
    min_share: float = opt(0.5, float, lo=0.0, hi=1.0)
    scale: str = opt("inverse", str, tuple(SCALE_RULES))
    momentum: str = opt("reset", str, ("reset", "keep"))
    scale_at: str = opt("input", str, SCALE_AT)
    warmup_steps: int = opt(0, int, lo=0)
    cooldown_steps: int = opt(0, int, lo=0)  # the last steps: the whole parent, averaged
    dropconnect: float = opt(0.0, float, lo=0.0, hi=1.0, hi_open=True)
    compress: str = opt("none", str, ("none", *CODECS))  # the blocks' changes (see above)
    block: int = opt(256, int, lo=1, hi=1 << 24)  # int8: values per scale

    def check(self, parallel, where):
        if self.compress != "none" and parallel.workers == 1:
            raise HornError(
                f"{where('compress')}: compresses the exchange of sub-network groups "
                f"(workers > 1), found workers = 1 (model averaging's is "
                f"[parallel.average] compress)"
            )
        if not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf
            for w in self.weights
        ):
            raise HornError(
                f"{where('weights')}: expected a list of positive numbers, found {self.weights!r}"
            )
        if (
            self.partition == "weighted"
            and parallel.workers > 1
            and len(self.weights) != parallel.workers
        ):
            raise HornError(
                f"{where('weights')}: expected {parallel.workers} shares (one per "
                f"worker), found {len(self.weights)}"
            )


def preview(setup, settings, workers):
    """Round 0's compact nets of group 0, one per worker, gathered from the parent."""
    parent = setup.model
    layout = SubnetLayout(parent, settings.dropconnect, settings.scale, settings.scale_at)
    _, plans = draw_plans(layout, settings, workers, setup.seed, 0, 0)
    models = []
    for worker, plan in enumerate(plans):
        model = compact_model(parent.backend, plan)
        gather(parent.backend, layout, plan, parent.params, model.params)
        set_input_scales(model, layout, plan)
        models.append((f"worker {worker}'s sub-network", model))
    return models


def draw_plans(layout, settings, workers, seed, round_, group):
    """A round's partition of every hidden layer (the same on every rank of the group)
    and each worker's plan from it."""
    rng = np.random.default_rng(derive_seed(seed + round_, group, 1 << 20))
    parts = [
        partition(n, workers, settings.partition, rng, settings.weights, settings.min_share)
        for n in layout.sizes
    ]
    return parts, [layout.plan(parts, w) for w in range(workers)]


def compact_model(backend, plan):
    """A worker's compact net, its parameters left for ``gather`` to fill."""
    return Model.from_spec(plan.spec, backend, initialize_params=False)


def set_input_scales(model, layout, plan):
    for index in layout.split:  # the partition protocol's input scale
        model.layers[index].input_scale = plan.input_scales.get(index, 1.0)


@register_strategy("subnet", SubnetSettings, scope="worker", preview=preview)
def build(setup, settings, inner):
    if settings.partition == "weighted" and len(settings.weights) != setup.peer.workers:
        raise HornError(
            f"{setup.source}: parallel.subnet.weights has {len(settings.weights)} "
            f"entries; the layout has {setup.peer.workers} workers per group"
        )
    return SubnetSync(setup, settings)


class SubnetSync(PeerSync):
    def __init__(self, setup, settings):
        super().__init__(setup.peer)
        self.parent, self.parent_optimizer, self.make_optimizer = (
            setup.model,
            setup.optimizer,
            setup.make_optimizer,
        )
        self.local_steps, self.total_steps = setup.local_steps, setup.total_steps
        self.settings = settings
        self.keep_state = settings.momentum == "keep"
        self.cross_average, self.outer, self.cross = False, None, None  # average_across_groups
        self.codec, self.block = settings.compress, settings.block
        if self.codec != "none":
            self.residual = setup.model.xp.zeros_like(setup.model.params)
            self._messages = Messages(setup.peer, setup.model.xp, "group")
        self.global_every = setup.global_every
        self.seed = setup.seed
        self.layout = SubnetLayout(
            setup.model, settings.dropconnect, settings.scale, settings.scale_at
        )
        self.warmup_steps = min(settings.warmup_steps, setup.total_steps)
        self.cooldown_from = max(setup.total_steps - settings.cooldown_steps, self.warmup_steps)
        self.steps_done = 0
        self.backend = setup.model.backend
        self.round = 0
        self.mask_draws = 0
        self._compact = {}  # plan key -> (model, optimizer): reused while sizes repeat
        self._recv = None
        self._partitions = []
        if self.warmup_steps or not self.cooldown_from:  # the whole parent first
            self.model, self.optimizer = setup.model, setup.optimizer
        else:
            self._begin_round()

    def trainee(self, model, optimizer):
        return self.model, self.optimizer

    def eval_model(self, model):
        return self.parent  # reassembled at every round's end

    def records(self):
        records, self._partitions = self._partitions + self.peer.drain_records(), []
        return records

    # ---- hooks for a cross-group strategy on top (average, ensemble) -----------------
    def average_across_groups(self, outer=None, compressed=None):
        """Average the groups' reassembled parents every ``global_every`` rounds, then
        step them with ``outer`` (an OuterOptimizer over the parent) if given;
        ``compressed`` (a CompressedMean over "cross") sends codec-compressed changes."""
        self.cross_average = self.peer.groups > 1
        self.outer = outer if self.cross_average else None
        self.cross = compressed if self.cross_average else None

    def commit(self):
        """Write the current sub-networks into the parent (one Allgatherv in the group)."""
        self._assemble_params()
        if self.codec != "none":  # train on from what every rank decoded, not the original
            self.refresh()

    def refresh(self):
        """Re-gather this worker's sub-network after the parent was replaced."""
        gather(
            self.backend,
            self.layout,
            self.plans[self.peer.worker],
            self.parent.params,
            self.model.params,
        )

    def checkpoint_buffers(self, model, optimizer):
        """The group's parent (and its optimizer state when it is kept across rounds or
        trains in a warm-up or cool-down): a round's sub-network is re-gathered from it
        on resume."""
        key = f"group{self.peer.group}"
        buffers = {"parent": (key, self.parent.params)}
        if self.keep_state or self.warmup_steps or self.cooldown_from < self.total_steps:
            # kept: the group's; else live on each rank while the whole parent trains
            owner = key if self.keep_state else None
            buffers.update(
                {f"opt.{k}": (owner, v) for k, v in self.parent_optimizer.state().items()}
            )
        if self.outer is not None:  # stepped from the cross-group mean: the same everywhere
            buffers.update({f"outer.{k}": ("world", v) for k, v in self.outer.buffers().items()})
        if self.codec != "none":
            buffers["subnet.residual"] = (None, self.residual)  # each rank's own
        if self.cross is not None:
            buffers.update(self.cross.checkpoint_buffers("cross.compress"))
        return buffers

    def checkpoint_meta(self):
        meta = {"round": self.round, "mask_draws": self.mask_draws, "steps_done": self.steps_done}
        return {**meta, "outer": self.outer.counters()} if self.outer is not None else meta

    def restore_meta(self, meta):
        if self.outer is not None:
            self.outer.restore_counters(meta["outer"])
        self.round, self.mask_draws = meta["round"], meta["mask_draws"]
        self.steps_done = self.boundary_at = meta.get("steps_done", 0)
        if self.warmup_steps <= self.steps_done < self.cooldown_from:  # else: whole parent
            self._begin_round()
        elif self.steps_done >= self.cooldown_from:
            self._begin_cooldown(restored=True)
        self._partitions = []  # this round's record went out with the checkpoint

    # ---- rounds ----------------------------------------------------------------
    def _begin_round(self):
        parts, self.plans = draw_plans(
            self.layout, self.settings, self.peer.workers, self.seed, self.round, self.peer.group
        )
        plan = self.plans[self.peer.worker]
        model, optimizer = self._compact_for(plan)
        gather(self.backend, self.layout, plan, self.parent.params, model.params)
        for name, buf in optimizer.state().items():
            if self.keep_state:
                gather(self.backend, self.layout, plan, self.parent_optimizer.state()[name], buf)
            else:
                buf[...] = 0
        set_input_scales(model, self.layout, plan)
        model.mask_draws = self.mask_draws
        self.model, self.optimizer = model, optimizer
        digest = hashlib.sha256(b"".join(u.tobytes() for p in parts for u in p)).hexdigest()[:16]
        self._partitions.append(
            {
                "kind": "partition",
                "round": self.round,
                "group": self.peer.group,
                "partition_sizes": [[len(u) for u in p] for p in parts],
                "partition_sha256": digest,
            }
        )

    def _compact_for(self, plan):
        if plan.key not in self._compact:
            model = compact_model(self.backend, plan)
            model.mask_seed = derive_seed(self.seed, self.peer.group, self.peer.worker)
            self._compact[plan.key] = (model, self.make_optimizer(model))
        return self._compact[plan.key]

    def after_step(self, step):
        done = self.steps_done = step + 1
        if done <= self.warmup_steps:
            self._warmup_barrier(done)
            return
        if done > self.cooldown_from:
            self._cooldown_barrier(done)
            return
        if not self.is_boundary(
            done - self.warmup_steps, self.local_steps, self.cooldown_from - self.warmup_steps
        ):
            return
        self.mask_draws = self.model.mask_draws
        self._assemble_params()
        if self.keep_state:
            for name, buf in self.optimizer.state().items():
                self._assemble(buf, self.parent_optimizer.state()[name])
        self.round += 1
        if self.cross_average and (self.round % self.global_every == 0 or done == self.total_steps):
            mean_and_step(
                self.peer,
                self.parent,
                self.parent_optimizer,
                self.keep_state,
                "cross",
                self.cross,
                self.outer,
            )
        self.peer.sync()
        self.boundary_at = done
        if done == self.cooldown_from < self.total_steps:
            self._begin_cooldown()
        elif done < self.total_steps:
            self._begin_round()

    def _warmup_barrier(self, done):
        """Model averaging of the whole parent; the first round begins after the last."""
        if not (
            self.is_boundary(done, self.local_steps, self.total_steps) or done == self.warmup_steps
        ):
            return
        average(self.peer, self.parent, self.parent_optimizer, self.keep_state, "world")
        if self.cross is not None:  # cross-group changes are measured from here on
            self.cross.rebase(self.parent.params)
        self.peer.sync()
        self.boundary_at = done
        if done == self.warmup_steps < self.cooldown_from:  # else: straight on to the cool-down
            self.mask_draws = self.parent.mask_draws
            self._begin_round()

    def _begin_cooldown(self, restored=False):
        """Every rank trains the group's reassembled parent from here to the end: on
        from the rounds' mask draws and, unless kept, fresh optimizer state (a resumed
        run has both from its checkpoint)."""
        if not restored:
            self.parent.mask_draws = self.mask_draws
            if not self.keep_state:
                for buf in self.parent_optimizer.state().values():
                    buf[...] = 0
        self.model, self.optimizer = self.parent, self.parent_optimizer

    def _cooldown_barrier(self, done):
        """Model averaging of the whole parent every ``local_steps`` of the cool-down."""
        if not self.is_boundary(
            done - self.cooldown_from, self.local_steps, self.total_steps - self.cooldown_from
        ):
            return
        average(self.peer, self.parent, self.parent_optimizer, self.keep_state, "world")
        self.peer.sync()
        self.boundary_at = done

    def _assemble_params(self):
        """The parameters into the parent: the blocks, or their compressed changes."""
        if self.codec == "none":
            self._assemble(self.model.params, self.parent.params)
        else:
            self._assemble_changes()

    def _assemble(self, compact_buf, parent_buf):
        """Allgatherv every worker's block in the group, then scatter them all."""
        recv, counts, blocks = self._blocks()
        self.backend.synchronize()
        self.peer.allgatherv(compact_buf, recv, counts, "group")
        scatter(self.backend, self.layout, self.plans, blocks, parent_buf)

    def _assemble_changes(self):
        """Every worker's block rebuilt on every rank as its round-start block (gathered
        from the parent, unchanged during the round) plus its decoded change."""
        backend, layout, xp = self.backend, self.layout, self.parent.xp
        plan = self.plans[self.peer.worker]
        recv, _, blocks = self._blocks()
        recv[...] = 0  # the alignment gaps between parameters, which gather leaves alone
        for each, block in zip(self.plans, blocks):
            gather(backend, layout, each, self.parent.params, block)
        change = self.model.params - blocks[self.peer.worker]
        residual = xp.zeros_like(change)  # this block's part of the parent-wide residual
        gather(backend, layout, plan, self.residual, residual)
        message = xp.empty(message_size(self.codec, plan.size, self.block), xp.uint8)
        backend.compress(self.codec, change, residual, self.block, message)
        scatter(backend, layout, [plan], [residual], self.residual)
        backend.synchronize()
        sizes = [message_size(self.codec, each.size, self.block) for each in self.plans]
        for block, received in zip(blocks, self._messages.exchange(message, sizes)):
            backend.decompress_add(self.codec, received, self.block, block)
        scatter(backend, layout, self.plans, blocks, self.parent.params)

    def _blocks(self):
        """A float buffer holding one compact block per worker: (it, counts, views)."""
        counts = [plan.size for plan in self.plans]
        total = sum(counts)
        if self._recv is None or self._recv.size < total:
            self._recv = self.parent.xp.empty(total, dtype=self.parent.dtype)
        recv = self._recv[:total]
        bounds = np.cumsum([0] + counts)
        return recv, counts, [recv[bounds[w] : bounds[w + 1]] for w in range(len(counts))]
