"""Teachers on real ranks (one group each), checked against numpy by hand on every rank:
the shared teacher's Allreduce and the local teacher's Allgather both give the weighted
mean of the members' softmax(logits / T); identical members give their own outputs, and
compressing identical members (alpha = 0, no weight decay) leaves the model unchanged,
while compressing toward different members does not. Prints OK on rank 0."""

import types

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.barriers.ensemble import LocalTeacher, SharedTeacher
from horn.bsp import Peer
from horn.distill import DistillBatches, DistillLoss, distill
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.model import Model
from horn.optim import SGD

T = 2.5
install_abort_hook()
peer = Peer.create(MPI.COMM_WORLD, None, 1, timeout_s=60)
G, g = peer.groups, peer.group
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 7)).astype(np.float32)
local = types.SimpleNamespace(x_train=x, y_train=rng.integers(0, 5, 40))
weights = [0.5 + k for k in range(G)]


def member(seed):
    return Model([Dense(16, "relu"), Dense(5)], SoftmaxCrossEntropy(), 7, "numpy", seed=seed)


def by_hand(seeds, rows, w):
    """sum_k w_k softmax(f_k(x) / T) / sum_k w_k, in float64 numpy."""
    total = 0.0
    for seed, wk in zip(seeds, w):
        z = member(seed).forward(rows, train=False).astype(np.float64) / T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        total = total + wk * e / e.sum(axis=1, keepdims=True)
    return total / sum(w)


# different members (seed = group), weighted
shared = SharedTeacher(peer, x, T)
rows, teacher, labels = shared.targets(member(g), weights[g], barrier=0)
assert labels is None and rows is x
assert np.abs(teacher - by_hand(range(G), x, weights)).max() < 1e-6
local_teacher = LocalTeacher(peer, local, 24, T, seed=3, model=member(0))
rows, teacher_l, labels_l = local_teacher.targets(member(g), weights[g], barrier=0)
index = [int(np.flatnonzero((x == r).all(axis=1))[0]) for r in rows]
assert len(rows) == 24 and np.array_equal(labels_l, local.y_train[index])
assert np.abs(teacher_l - by_hand(range(G), rows, weights)).max() < 1e-6

# identical members: the teacher is the member's own output
same = member(7)
own = by_hand([7], x, [1.0])
assert np.abs(shared.targets(same, weights[g], 0)[1] - own).max() < 1e-6
rows, teacher_same, _ = local_teacher.targets(same, weights[g], 1)
assert np.abs(teacher_same - by_hand([7], rows, [1.0])).max() < 1e-6

# compression of identical members is a no-op; toward different members it is not
loss = DistillLoss(alpha=0.0, temperature=T)
for target, moves in ((shared.targets(same, 1.0, 0)[1], False), (teacher, True)):
    student = member(7)
    before = student.params.copy()
    batches = DistillBatches(student.backend, x, target, 8, np.random.default_rng(g))
    distill(student, SGD(student, momentum=0.9), loss, batches, 50, 0.2)
    change = float(np.abs(student.params - before).max())
    assert (change > 1e-3) if moves else (change < 1e-5), (moves, change)

if peer.rank == 0:
    print("OK", flush=True)
