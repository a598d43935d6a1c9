"""Parallel strategies by name, as layers are: a new strategy is one new module.

A strategy module declares its job keys as a frozen dataclass of
:func:`horn.jobs.opt` fields (read from the job's ``[parallel.NAME]`` table) and
registers a ``build(setup, settings, inner)`` function returning a
:class:`horn.barriers.base.Sync`. ``parallel.barrier`` names a **group** strategy
(what groups do at a barrier); the one **worker** strategy (sub-networks) runs
inside each group of several workers and is handed to the group strategy as
``inner``. The job loader, the runner and the trainer know no strategy by name.
"""

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from horn.errors import HornError
from horn.suggest import did_you_mean

_STRATEGIES = {}
_BUILT_INS = (
    "horn.barriers.average",
    "horn.barriers.subnet",
    "horn.barriers.ensemble",
    "horn.barriers.none",
)


@dataclass(frozen=True)
class Setup:
    """What a strategy may use of a run: the peer, this rank's model and optimizer,
    the round layout and the few training settings strategies share, never the job."""

    peer: object
    model: object
    optimizer: object
    make_optimizer: Callable
    total_steps: int
    local_steps: int
    global_every: int
    seed: int
    batch_size: int
    lr: float
    source: str = "<job>"  # the job file, for messages
    base_dir: str | None = None  # relative files in strategy settings resolve here
    data: object = None  # the whole data set (validation split, shared inputs)
    local: object = None  # this group's shard of the training data


@dataclass(frozen=True)
class NoSettings:
    """A strategy without settings of its own."""

    def check(self, parallel, where):
        """Cross-key checks at load time; ``where(key, table=this one)`` names a key of
        a ``[parallel.TABLE]`` in messages."""


@dataclass(frozen=True)
class Strategy:
    name: str
    settings: type
    build: Callable
    scope: str  # "group" (a value of parallel.barrier) or "worker" (inside a group)
    preview: Callable | None = None  # see register_strategy


def register_strategy(name, settings=NoSettings, scope="group", preview=None):
    """Decorator of a ``build(setup, settings, inner)`` function: makes the strategy
    known as ``name`` (``parallel.barrier = name`` for a group strategy) with its
    settings read from ``[parallel.NAME]``.

    ``preview(setup, settings, workers) -> [(label, Model)]``, if given, makes without
    a peer (``setup.peer`` is None) the checks ``build`` would make on the ranks (files
    it reads, models it builds) and returns the models other than ``setup.model`` that
    the strategy's ranks train (sub-networks' compact nets): ``horn validate`` calls it
    and steps each model once."""
    if scope not in ("group", "worker"):
        raise ValueError(f"scope must be 'group' or 'worker', found {scope!r}")
    if not (dataclasses.is_dataclass(settings) and settings.__dataclass_params__.frozen):
        raise TypeError(f"strategy {name!r}: settings must be a frozen dataclass")

    def wrap(build):
        _STRATEGIES[name] = Strategy(name, settings, build, scope, preview)
        return build

    return wrap


def strategies():
    """Every registered strategy (the built-ins register themselves on import)."""
    for module in _BUILT_INS:
        importlib.import_module(module)
    return dict(_STRATEGIES)


def group_strategy(name, where):
    known = {n: s for n, s in strategies().items() if s.scope == "group"}
    if name not in known:
        raise HornError(
            f"{where}: expected one of {', '.join(map(repr, known))}, found "
            f"{name!r}{did_you_mean(name, known)}"
        )
    return known[name]


def worker_strategy():
    (strategy,) = [s for s in strategies().values() if s.scope == "worker"]
    return strategy


def moved_keys():
    """Old flat ``[parallel]`` keys -> their new place, from each settings class's
    ``FORMERLY`` (old name -> new name): an old job gets a one-line pointer."""
    return {
        old: f"[parallel.{s.name}] {new}"
        for s in strategies().values()
        for old, new in getattr(s.settings, "FORMERLY", {}).items()
    }
