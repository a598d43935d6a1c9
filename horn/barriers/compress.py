"""Compressed exchanges: each rank sends a change in fp16, bf16 or blockwise int8, with
error feedback, and every rank decodes every rank's message itself.

Why an Allgather and not an Allreduce: a reduction would have to decode, add and
re-encode at every hop (compounding the error, and differently for each segment of
a ring). Instead every rank receives every rank's message unchanged, decodes them
all and sums them in rank order, so the result is exact for what was sent and
bit-identical on every rank without any extra exchange. The price is that each
rank sends ``(p - 1) * message`` bytes (ring Allgather) instead of Allreduce's
``2 (p - 1) / p * 4 P``:

- fp16 / bf16: ``(p - 1) * 2 P`` -- half of fp32 Allreduce at p = 2, equal at p = 4;
- int8, block B: ``(p - 1) * (P + 4 ceil(P / B))`` -- 3.9x less at p = 2 (B = 256),
  2x less at p = 4, equal at p = 8.

Messages land at 8-byte aligned offsets of the receive buffer (Allgatherv
displacements), so the scales and halves are aligned views on every device; the
gaps are never sent, so the bytes above are exactly what goes on the wire.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what the codec
dropped stays in a per-rank residual and is added to the next round's change, so
nothing is lost, only delayed. The anchor (the model at the last barrier) is the
same on every rank; the residual is each rank's own.
"""

import numpy as np

from horn.backends.base import message_size

ALIGN = 8  # bytes: each received message starts at a multiple (float32 scales, halves)


class Messages:
    """Every rank's encoded message on every rank: one Allgatherv over ``comm``."""

    def __init__(self, peer, xp, comm):
        self.peer, self.xp, self.comm = peer, xp, comm
        self.recv = None

    def exchange(self, message, sizes):
        """``sizes[r]``: rank r's message bytes (``message`` is this rank's); returns
        the received messages in rank order (views of one buffer, valid until the next
        exchange)."""
        displs, end = [], 0
        for size in sizes:
            displs.append(end)
            end += -(-size // ALIGN) * ALIGN
        if self.recv is None or self.recv.size < end:
            self.recv = self.xp.empty(end, self.xp.uint8)
        self.peer.allgatherv(message, self.recv[:end], sizes, self.comm, displs)
        return [self.recv[d : d + s] for d, s in zip(displs, sizes)]


class CompressedMean:
    """Replaces a model's parameters by ``anchor + mean of the ranks' decoded changes``
    over ``comm`` ("world" for model averaging, "cross" for groups' parents)."""

    def __init__(self, peer, model, codec, block, comm="world"):
        self.codec, self.block, self.ranks = codec, block, peer.comm_size(comm)
        xp = model.xp
        self.anchor = xp.array(model.params, copy=True)
        self.residual = xp.zeros_like(model.params)
        self.change = xp.empty_like(model.params)
        self.message = xp.empty(message_size(codec, model.size, block), xp.uint8)
        self.messages = Messages(peer, xp, comm)
        self._spare = None  # a residual thrown away after use (copies without feedback)

    def average(self, model):
        """Training's barrier: with error feedback."""
        self._mean(model, self.residual, model.params)

    def mean_copy(self, model, out):
        """``out`` = the same mean of the ranks' current models, without error feedback:
        a throwaway copy (evaluation between barriers) must not move the residual that
        the training exchanges carry, and its one-off codec error dies with it."""
        if self._spare is None:
            self._spare = model.xp.zeros_like(model.params)
        self._spare[...] = 0
        self._mean(model, self._spare, out)

    def _mean(self, model, residual, out):
        backend, change = model.backend, self.change
        change[...] = model.params
        change -= self.anchor
        backend.compress(self.codec, change, residual, self.block, self.message)
        backend.synchronize()
        received = self.messages.exchange(self.message, [self.message.size] * self.ranks)
        change[...] = 0
        for message in received:  # rank order: the same sum on every rank
            backend.decompress_add(self.codec, message, self.block, change)
        change /= self.ranks
        out[...] = self.anchor
        out += change

    def rebase(self, params):
        """The next round's changes are measured from ``params`` (after any outer step)."""
        self.anchor[...] = params

    def checkpoint_buffers(self, prefix="compress"):
        """``{name: (shared key or None, array)}``: the anchor is the world's, the
        residual each rank's own."""
        return {
            f"{prefix}.anchor": ("world", self.anchor),
            f"{prefix}.residual": (None, self.residual),
        }


class CompressedWeightedMean:
    """``sum_r w_r y_r / sum_r w_r`` over ``comm`` for float32 vectors ``y_r`` of ``n``
    values: each rank sends ``w_r`` (4 bytes, float32) then ``w_r y_r`` in the codec,
    ``(p - 1) (4 + message)`` bytes; every rank decodes all in rank order.

    No error feedback: it suits a quantity that is summed over rounds (a model's
    changes), where the dropped part can still arrive later. Outputs (EC's teacher)
    are recomputed from new models at every barrier; last barrier's rounding error is
    no part of this one's outputs, so adding it in would only bias them.
    """

    def __init__(self, peer, backend, codec, block, comm, n):
        self.backend, self.codec, self.block = backend, codec, block
        self.ranks = peer.comm_size(comm)
        xp = backend.xp
        self.message = xp.empty(4 + message_size(codec, n, block), xp.uint8)
        self.values = xp.empty(n, xp.float32)
        self.spare = xp.empty(n, xp.float32)  # a residual thrown away
        self.messages = Messages(peer, xp, comm)

    def __call__(self, values, weight):
        """The weighted mean (host float32, ``values``' shape) of every rank's ``values``."""
        backend, xp, values_ = self.backend, self.backend.xp, self.values
        values_[...] = backend.asarray(values.reshape(-1))
        values_ *= xp.float32(weight)
        self.message[:4].view(xp.float32)[...] = weight
        self.spare[...] = 0
        backend.compress(self.codec, values_, self.spare, self.block, self.message[4:])
        backend.synchronize()
        received = self.messages.exchange(self.message, [self.message.size] * self.ranks)
        values_[...] = 0
        weights = 0.0
        for message in received:  # rank order: the same sum on every rank
            backend.decompress_add(self.codec, message[4:], self.block, values_)
            weights += float(backend.to_host(message[:4].view(xp.float32))[0])
        return backend.to_host(values_).reshape(values.shape) / np.float32(weights)
