"""Synchronous data-parallel by gradients, overlapped with backward (DDP's buckets).

The flat gradient buffer's trainable prefix is cut, at layer boundaries and from its
end, into buckets of about ``bucket_mb``. Backward fills gradients last layer first,
so each bucket is complete as soon as the layer that owns its start has run: its
in-place ``Iallreduce`` starts right then (a backward hook, :meth:`Model.add_backward_hook`)
and runs while earlier layers compute; a ``Testall`` after every layer lets MPI
progress it. After the first layer, one watchdog poll loop waits for all of them
(no round trip per bucket), then the sums are divided by the world size, so the
optimizer steps the same averaged gradients, and the parameters stay identical, on
every rank. Statistics a layer keeps in the parameters (``trainable=False``, such as
batch norm's running mean) are averaged in the same wait, as model averaging would.
"""

from horn.barriers.base import PeerSync


def plan_buckets(model, bucket_mb):
    """``[(lo, hi)]``: contiguous slices of ``grads[:trainable_size]`` in the order
    backward completes them (last first). Each starts at a layer's first trainable
    offset and holds ``bucket_mb`` or more, but the last (a layer is never split)."""
    k = model.trainable_size
    starts = {}
    for _, layer, off, _ in model.slots:
        if off < k:
            starts[id(layer)] = min(off, starts.get(id(layer), off))
    per_bucket = max(1, int(bucket_mb * 2**20) // model.dtype.itemsize)
    buckets, hi, cuts = [], k, sorted(starts.values(), reverse=True)
    for lo in cuts:
        if hi - lo >= per_bucket or lo == cuts[-1]:
            buckets.append((lo, hi))
            hi = lo
    return buckets


class GradientSync(PeerSync):
    """Every step: the gradients' mean over the world, bucket by bucket during backward."""

    def __init__(self, peer, model, bucket_mb):
        super().__init__(peer)
        self.model = model
        self.buckets = plan_buckets(model, bucket_mb)
        self._requests, self._started = [], 0
        model.add_backward_hook(self._layer_done)

    def _next_is_ready(self, ready):
        return self._started < len(self.buckets) and self.buckets[self._started][0] >= ready

    def _layer_done(self, index, ready):
        if self._next_is_ready(ready):
            self.model.backend.synchronize()  # the device's kernels wrote them
        while self._next_is_ready(ready):
            lo, hi = self.buckets[self._started]
            self._requests.append(self.peer.start_allreduce_sum(self.model.grads[lo:hi]))
            self._started += 1
        if index == 0:
            self._finish()
        elif self._requests:
            self.peer.progress(self._requests)

    def _finish(self):
        m, p = self.model, self.peer.size
        stats = m.params[m.trainable_size :]
        if stats.size:
            self._requests.append(self.peer.start_allreduce_sum(stats))
        self.peer.wait_all(self._requests, "allreduce_gradients")
        if p > 1:
            m.grads[: m.trainable_size] /= p
            stats /= p
        self._requests, self._started = [], 0

    def after_step(self, step):
        self.peer.sync()
        self.boundary_at = step + 1

    def checkpoint_buffers(self, model, optimizer):
        """Parameters and optimizer state: the same on every rank (same averaged steps)."""
        buffers = {"params": ("world", model.params)}
        buffers.update({f"opt.{k}": ("world", v) for k, v in optimizer.state().items()})
        return buffers
