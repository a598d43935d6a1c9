"""Model averaging (MA-DNN / local SGD)."""

from dataclasses import dataclass

from horn.backends.base import CODECS
from horn.barriers.base import PeerSync
from horn.barriers.compress import CompressedMean
from horn.barriers.gradients import GradientSync
from horn.barriers.hosts import HostMeans
from horn.barriers.outer import OUTER_OPTIMIZERS, OuterOptimizer
from horn.barriers.registry import NoSettings, register_strategy
from horn.errors import HornError
from horn.jobs import opt


@dataclass(frozen=True)
class AverageSettings(NoSettings):
    """``[parallel.average]``."""

    FORMERLY = {"average_momentum": "momentum"}
    momentum: bool = opt(False, bool)  # average the optimizer state too (it differs per rank)
    outer: str = opt("sgd", str, OUTER_OPTIMIZERS)  # on the pseudo-gradient (horn.barriers.outer)
    outer_lr: float = opt(1.0, float, lo=0.0, lo_open=True)  # sgd with 1: plain averaging
    outer_momentum: float = opt(0.9, float, lo=0.0, hi=1.0, hi_open=True)  # nesterov; adam's beta1
    compress: str = opt("none", str, ("none", *CODECS))  # what each rank sends (barriers.compress)
    block: int = opt(256, int, lo=1, hi=1 << 24)  # int8: values per scale
    reduce: str = opt("parameters", str, ("parameters", "gradients"))  # what is averaged
    bucket_mb: float = opt(4.0, float, lo=0.0, lo_open=True)  # gradients: per Iallreduce
    # 0: flat (the world mean every round); k: the host's mean every round and the
    # world's every k-th, through one leader per host (horn.barriers.hosts)
    across_every: int = opt(0, int, lo=0, hi=1 << 20)

    def check(self, parallel, where):
        if self.reduce == "gradients":
            if parallel.local_steps != 1 or parallel.workers != 1:
                raise HornError(
                    f'{where("reduce")}: reduce = "gradients" averages every step\'s '
                    f"gradients: it needs parallel.local_steps = 1 and parallel.workers = 1, "
                    f"found local_steps = {parallel.local_steps}, workers = {parallel.workers}"
                )
            plain = {
                "momentum": False,
                "outer": "sgd",
                "outer_lr": 1.0,
                "compress": "none",
                "across_every": 0,
            }
            for key, default in plain.items():
                if getattr(self, key) != default:
                    raise HornError(
                        f'{where(key)}: reduce = "gradients" keeps every rank identical '
                        f"(no {key} to apply): expected {default!r}, found "
                        f"{getattr(self, key)!r}"
                    )
        if self.compress != "none" and parallel.workers > 1 and parallel.groups == 1:
            raise HornError(
                f"{where('compress')}: one group of sub-networks has no cross-group "
                f"average to compress (its own exchange is [parallel.subnet] compress), "
                f"found compress = {self.compress!r}"
            )
        if self.across_every and parallel.workers > 1:
            raise HornError(
                f"{where('across_every')}: hierarchical averaging applies to model averaging "
                f"(workers = 1), found workers = {parallel.workers}"
            )
        if self.across_every and self.compress != "none":
            raise HornError(
                f"{where('across_every')}: hierarchical averaging sends fp32; expected "
                f'compress = "none" with it, found {self.compress!r}'
            )


@register_strategy("average", AverageSettings)
def build(setup, settings, inner):
    """Average every round over the world; with sub-network groups, the groups'
    reassembled parents are averaged across groups every ``global_every`` rounds."""
    if inner is not None:
        inner.average_across_groups(
            outer_for(setup.model, settings), compressed_for(setup, settings, "cross")
        )
        return inner
    if settings.reduce == "gradients":
        return GradientSync(setup.peer, setup.model, settings.bucket_mb)
    return AverageSync(
        setup.peer,
        setup.model,
        setup.optimizer,
        setup.local_steps,
        setup.total_steps,
        settings.momentum,
        outer_for(setup.model, settings),
        compressed_for(setup, settings, "world"),
        settings.across_every,
    )


def compressed_for(setup, settings, comm):
    """The compressed mean over ``comm`` the settings ask for, or None for fp32."""
    if settings.compress == "none":
        return None
    return CompressedMean(setup.peer, setup.model, settings.compress, settings.block, comm)


def outer_for(model, settings):
    """The outer optimizer the settings ask for, or None for plain averaging."""
    if not OuterOptimizer.wanted(settings.outer, settings.outer_lr):
        return None
    return OuterOptimizer(model, settings.outer, settings.outer_lr, settings.outer_momentum)


class AverageSync(PeerSync):
    """Every ``local_steps`` steps, one in-place Allreduce-mean of the flat parameter
    buffer (and, optionally, of the optimizer state) over all ranks.

    With ``across_every = k`` (hierarchical): every round the mean over each host,
    every k-th round (and the last) the world mean through the host leaders. Only a
    world round ends a superstep and is a boundary (checkpoints, early stops): the
    ranks of different hosts differ in between. The outer optimizer steps at world
    rounds only, on the world mean: its anchor is the model at the last world round.
    """

    def __init__(
        self,
        peer,
        model,
        optimizer,
        local_steps,
        total_steps,
        average_state=False,
        outer=None,
        compressed=None,
        across_every=0,
    ):
        super().__init__(peer)
        self.across_every = across_every
        self.hosts = HostMeans(peer) if across_every else None
        self.world_mean = (
            self.hosts.world if self.hosts else lambda buf: peer.allreduce_mean(buf, "world")
        )
        self.model, self.optimizer, self.outer = model, optimizer, outer
        self.compressed = compressed
        self.local_steps, self.total_steps = local_steps, total_steps
        self.average_state = average_state
        self.steps_done = 0
        self._scratch = None

    def after_step(self, step):
        self.steps_done = step + 1
        if self.is_boundary(self.steps_done, self.local_steps, self.total_steps):
            if self.hosts is None:
                mean_and_step(
                    self.peer,
                    self.model,
                    self.optimizer,
                    self.average_state,
                    "world",
                    self.compressed,
                    self.outer,
                )
            elif self._across_now():  # fp32 only: check() refuses compress with hosts
                self._average(self.hosts.world)
                if self.outer is not None:
                    self.outer.step(self.model)
            else:
                self._average(self.hosts.host)
                return
            self.peer.sync()
            self.boundary_at = self.steps_done

    def _across_now(self):
        """A hierarchical world round: every ``across_every``-th round, and the last."""
        rounds = -(-self.steps_done // self.local_steps)
        return rounds % self.across_every == 0 or self.steps_done == self.total_steps

    def _average(self, mean):
        """Replace the parameters (and optimizer state) by ``mean`` of them, in place."""
        self.model.backend.synchronize()
        mean(self.model.params)
        if self.average_state:
            for buf in self.optimizer.state().values():
                mean(buf)

    def checkpoint_buffers(self, model, optimizer):
        state_key = "world" if self.average_state else None  # momentum differs per rank
        buffers = {"params": ("world", model.params)}
        buffers.update({f"opt.{k}": (state_key, v) for k, v in optimizer.state().items()})
        if self.outer is not None:
            buffers.update({f"outer.{k}": ("world", v) for k, v in self.outer.buffers().items()})
        if self.compressed is not None:
            buffers.update(self.compressed.checkpoint_buffers())
        return buffers

    def restore_meta(self, meta):
        self.boundary_at = self.steps_done = meta.get("steps_done", 0)
        if self.outer is not None:
            self.outer.restore_counters(meta["outer"])
        if self.compressed is not None:  # at a boundary the anchor is the model (any layout)
            self.compressed.rebase(self.model.params)

    def checkpoint_meta(self):
        meta = {"steps_done": self.steps_done}
        return {**meta, "outer": self.outer.counters()} if self.outer is not None else meta

    def eval_model(self, model):
        """The average of the replicas: the model itself right after a barrier, else an
        averaged copy (training goes on from the local replicas unchanged), exchanged
        with the job's codec when it has one."""
        if self.boundary_at == self.steps_done:
            return model
        if self._scratch is None:
            from horn.model import Model

            self._scratch = Model.from_spec(
                model.spec(), model.backend, dtype=model.dtype, initialize_params=False
            )
        if self.compressed is None:
            self._scratch.params[...] = model.params
            self.world_mean(self._scratch.params)
        else:
            self.compressed.mean_copy(model, self._scratch.params)
        return self._scratch


def average(peer, model, optimizer, with_state, comm):
    """Replace the parameters (and optimizer state) by their mean over ``comm``."""
    model.backend.synchronize()
    peer.allreduce_mean(model.params, comm)
    average_state(peer, optimizer, with_state, comm)


def mean_and_step(peer, model, optimizer, with_state, comm, compressed=None, outer=None):
    """A barrier's mean over ``comm`` (compressed, or fp32 when ``compressed`` is None),
    then the outer step; the next changes are measured from the result."""
    if compressed is None:
        average(peer, model, optimizer, with_state, comm)
    else:
        compressed.average(model)
        average_state(peer, optimizer, with_state, comm)
    if outer is not None:
        outer.step(model)
    if compressed is not None:
        compressed.rebase(model.params)


def average_state(peer, optimizer, with_state, comm):
    """The optimizer state's mean over ``comm`` (fp32), when ``with_state``."""
    if with_state:
        for buf in optimizer.state().values():
            peer.allreduce_mean(buf, comm)
