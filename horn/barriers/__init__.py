"""Barrier strategies: what happens between local steps.

``Sync`` is the interface (``horn.barriers.base``); one module per strategy, found
by name through :mod:`horn.barriers.registry`. :func:`make_sync` composes them: the
worker strategy (sub-networks) inside each group of several workers, handed to the
group strategy that ``parallel.barrier`` names.
"""

from horn.barriers.base import PeerSync, Sync
from horn.barriers.registry import Setup, group_strategy, register_strategy, worker_strategy
from horn.errors import HornError, in_file


def make_sync(setup, parallel):
    """The strategy for ``parallel`` (the job's section) on ``setup.peer``'s layout
    (``Sync()`` for a world of one)."""
    if setup.peer is None:
        return Sync()
    try:
        inner = None
        if setup.peer.workers > 1:
            worker = worker_strategy()
            inner = worker.build(setup, parallel.of(worker.name), None)
        group = group_strategy(parallel.barrier, f"{setup.source}: parallel.barrier")
        return group.build(setup, parallel.of(group.name), inner)
    except HornError as exc:  # a rank's message names the job, as validate's does
        raise in_file(setup.source, exc) from None


def preview_models(setup, parallel):
    """``[(label, Model)]``: the models besides ``setup.model`` that the layout's
    strategies would train on some rank, checked and built without a peer (see
    ``register_strategy``)."""
    chosen = [group_strategy(parallel.barrier, f"{setup.source}: parallel.barrier")]
    if parallel.workers > 1:
        chosen.insert(0, worker_strategy())
    try:
        return [
            model
            for strategy in chosen
            if strategy.preview is not None
            for model in strategy.preview(setup, parallel.of(strategy.name), parallel.workers)
        ]
    except HornError as exc:
        raise in_file(setup.source, exc) from None


__all__ = ["PeerSync", "Setup", "Sync", "make_sync", "preview_models", "register_strategy"]
