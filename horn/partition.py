"""Disjoint partitions of a layer's units among a group's workers.

Every rank of a group draws the same partition from the same seeded Generator,
so no messages are needed to agree on it.
"""

import numpy as np

from horn.errors import HornError

PARTITION_KINDS = ("balanced", "irregular", "weighted")


def partition(n, workers, kind, rng, weights=None, min_share=0.5):
    """Split units ``0..n-1`` into ``workers`` disjoint sorted index arrays covering all.

    balanced: random, sizes differ by at most one. irregular: every unit goes to
    a uniformly random worker, but each worker gets at least ``min_share`` of an
    equal share. weighted: sizes proportional to ``weights`` (heterogeneous hosts).
    """
    if n < workers:
        raise HornError(
            f"cannot split {n} units among {workers} workers: every worker needs at least one unit"
        )
    order = rng.permutation(n)
    if kind == "balanced":
        parts = np.array_split(order, workers)
    elif kind == "weighted":
        parts = np.split(order, np.cumsum(_weighted_sizes(n, weights))[:-1])
    elif kind == "irregular":
        floor = max(1, int(min_share * n / workers))
        owner = np.empty(n, dtype=np.int64)
        owner[: floor * workers] = np.arange(floor * workers) % workers
        owner[floor * workers :] = rng.integers(0, workers, n - floor * workers)
        parts = [order[owner == w] for w in range(workers)]
    else:
        raise HornError(f"unknown partition kind {kind!r}; expected one of {PARTITION_KINDS}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _weighted_sizes(n, weights):
    """Largest-remainder apportionment of n units by weight, at least one each."""
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    sizes = np.maximum(1, np.floor(exact).astype(np.int64))
    while sizes.sum() > n:
        sizes[np.argmax(sizes)] -= 1
    for i in np.argsort(-(exact - np.floor(exact)))[: n - sizes.sum()]:
        sizes[i] += 1
    return sizes
