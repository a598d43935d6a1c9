"""The shared teacher with a codec on real ranks (one group each, Numba members): every
rank's teacher equals, bit for bit, a numpy reference that encodes each member's weighted
outputs, decodes and sums them in group order, divides by the weights' sum and
renormalises the rows; the teacher is the same on every rank and within the codec's
bound of the fp32 teacher. Usage: compressed_teacher.py CODEC BLOCK. Prints OK on rank 0."""

import hashlib
import sys

import numpy as np
from mpi4py import MPI

from horn.abort import install_abort_hook
from horn.backends import get_backend
from horn.backends.base import message_size
from horn.barriers.ensemble import SharedTeacher
from horn.bsp import Peer
from horn.distill import soft_outputs
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.model import Model

codec, block = sys.argv[1], int(sys.argv[2])
T = 2.0
install_abort_hook()
world = MPI.COMM_WORLD
peer = Peer.create(world, None, 1, timeout_s=60)
g = peer.group
x = np.random.default_rng(0).standard_normal((53, 7)).astype(np.float32)
member = Model([Dense(16, "relu"), Dense(5)], SoftmaxCrossEntropy(), 7, "numba", seed=g)
weight = 0.5 + g

teacher = SharedTeacher(peer, x, T, codec, block, member).targets(member, weight, 0)[1]
exact = SharedTeacher(peer, x, T).targets(member, weight, 0)[1]

ref = get_backend("numpy")
outputs = soft_outputs(member, x, T, np.empty((len(x), 5), np.float32))
everyone = world.allgather((outputs, weight))  # outside horn's exchange
total, weights = np.zeros(outputs.size, np.float32), 0.0
for out, w in everyone:
    message = np.empty(message_size(codec, out.size, block), np.uint8)
    ref.compress(
        codec, out.reshape(-1) * np.float32(w), np.zeros(out.size, np.float32), block, message
    )
    ref.decompress_add(codec, message, block, total)
    weights += float(np.float32(w))
want = total.reshape(outputs.shape) / np.float32(weights)
want /= want.sum(axis=1, keepdims=True)
assert np.array_equal(teacher, want), np.abs(teacher - want).max()

hashes = world.allgather(hashlib.sha256(teacher.tobytes()).hexdigest())
assert len(set(hashes)) == 1, hashes
bound = {"fp16": 2e-3, "bf16": 1.6e-2, "int8": 2e-2}[codec]  # relative: 2^-11, 2^-8; 1/127
error = np.abs(teacher - exact).max()
assert 0 < error < bound * exact.max(), (codec, error)
if peer.rank == 0:
    print("OK", flush=True)
