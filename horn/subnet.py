"""Sub-networks of a parent network: which units each worker keeps, and moving
weights between the parent and a worker's compact copy.

Worker w's sub-network keeps, for every dense layer, the rows of its own input
units and the columns of its own output units (all inputs for the first layer,
all outputs for the last). It is stored *compacted* -- a small dense model --
for the whole round, so local steps run at full BLAS speed; gather and scatter
happen once per round.

Where the scale goes (``scale_at``): "input" multiplies a layer's inputs by s in
every forward and backward pass (Dense.input_scale). The gradient of W then
carries a factor s, and so does the input gradient, so SGD on the parent's
coordinates takes steps about s^2 too large for the function the sub-network
computes (x4 units kept out of 4 -> x16 on hidden-to-hidden weights).
"weights" folds s into the gathered weights instead (W_c = s W) and divides it
out at scatter: the same forward function, but SGD now runs on the compact
network's own coordinates, i.e. a per-layer learning-rate correction of 1/s^2
with no per-step cost (one pass over the compact block per round). Optimizer
state is folded like the parameters: the SGD velocity is a sum of steps, so it
lives in parameter units.
"""

import math

import numpy as np

from horn.errors import HornError
from horn.model import layer_from_spec, spec_layout

SCALE_RULES = {"inverse": lambda k: 1.0 / k, "sqrt": lambda k: 1.0 / math.sqrt(k),
               "none": lambda k: 1.0}
SCALE_AT = ("input", "weights")


class SubnetLayout:
    """The partitionable structure of a parent: its dense layers and hidden widths."""

    def __init__(self, parent, dropconnect=0.0, scale="inverse", scale_at="input"):
        if scale_at not in SCALE_AT:
            raise HornError(f"sub-networks: scale_at must be one of {SCALE_AT}, found {scale_at!r}")
        self.parent, self.dropconnect, self.scale_rule = parent, dropconnect, SCALE_RULES[scale]
        self.fold = scale_at == "weights"
        self.spec = parent.spec()
        self.dense = []
        for i, layer in enumerate(parent.layers):
            if not layer.params:
                if layer_from_spec(self.spec["layers"][i]).build(7) != 7:
                    raise HornError(f"sub-networks: layer {i} ({self.spec['layers'][i]['type']}) "
                                    f"changes the width; only dense and width-preserving layers "
                                    f"can be partitioned")
                continue
            if set(layer.params) - {"W", "b"} or layer.params["W"].ndim != 2 \
                    or "units" not in self.spec["layers"][i]:
                raise HornError(f"sub-networks: layer {i} ({self.spec['layers'][i]['type']}) is "
                                f"not a dense layer (parameters W and b); it cannot be partitioned")
            self.dense.append(i)
        if len(self.dense) < 2:
            raise HornError("sub-networks need at least two dense layers (a hidden layer to "
                            "partition)")
        self.sizes = [parent.layers[i].params["W"].shape[1] for i in self.dense[:-1]]
        self.parent_slots = {name: (off, shape) for name, _, off, shape in parent.slots}

    def plan(self, parts, worker):
        """Worker ``worker``'s sub-network, given each hidden layer's partition ``parts``."""
        return WorkerPlan(self, [p[worker] for p in parts])


class WorkerPlan:
    """One worker's sub-network for one round: its compact spec and, for each of
    its parameters, the (rows, cols) of the parent it holds."""

    def __init__(self, layout, units):
        spec = {**layout.spec, "layers": [dict(s) for s in layout.spec["layers"]]}
        self.index = {}  # parameter name -> (rows, cols) in the parent, None = all
        self.scales = {}  # dense layer index -> the scale rule's factor for its inputs
        for j, i in enumerate(layout.dense):
            rows = units[j - 1] if j > 0 else None
            cols = units[j] if j < len(layout.dense) - 1 else None
            if cols is not None:
                spec["layers"][i]["units"] = len(cols)
            if layout.dropconnect and spec["layers"][i]["type"] == "dense":
                spec["layers"][i]["type"] = "dropconnect_dense"
                spec["layers"][i]["p"] = layout.dropconnect
            self.index[f"{i}.W"] = (rows, cols)
            self.index[f"{i}.b"] = (None, cols)
            if rows is not None:
                self.scales[i] = layout.scale_rule(len(rows) / layout.sizes[j - 1])
        self.spec = spec
        self.slots, self.size = spec_layout(spec)
        self.key = tuple(len(u) for u in units)
        # where the factors go: Dense.input_scale, or folded into the gathered weights
        self.input_scales = {} if layout.fold else dict(self.scales)
        self.weight_scales = {f"{i}.W": s for i, s in self.scales.items()
                              if layout.fold and s != 1.0}

    def views(self, parent_buf, compact_buf, layout):
        """Yield (name, parent 2-D view, compact 2-D view, rows, cols) per parameter."""
        for name, off, shape in self.slots:
            poff, pshape = layout.parent_slots[name]
            psize = int(np.prod(pshape))
            rows, cols = self.index[name]
            p2 = parent_buf[poff:poff + psize].reshape(pshape if len(pshape) == 2 else (1, -1))
            c2 = compact_buf[off:off + int(np.prod(shape))].reshape(
                shape if len(shape) == 2 else (1, -1))
            yield name, p2, c2, rows, cols


def gather(backend, layout, plan, parent_buf, compact_buf):
    """compact <- the plan's rows/cols of the parent (parameters or optimizer state),
    times the folded scale where ``scale_at = "weights"``."""
    for name, p2, c2, rows, cols in plan.views(parent_buf, compact_buf, layout):
        backend.gather(p2, rows, cols, c2)
        if name in plan.weight_scales:
            backend.scale(c2, plan.weight_scales[name])


def scatter(backend, layout, plans, blocks, parent_buf):
    """parent <- every worker's compact block; shared parameters (kept whole by every
    worker, e.g. the output bias) become the mean of the workers' copies. A folded
    scale is divided out of the block in place first (blocks are scratch here)."""
    shared = {}
    for plan, block in zip(plans, blocks):
        for name, p2, c2, rows, cols in plan.views(parent_buf, block, layout):
            if rows is None and cols is None:
                shared[name] = c2.astype(np.float64) + shared.get(name, 0.0)
            else:
                if name in plan.weight_scales:
                    backend.scale(c2, 1.0 / plan.weight_scales[name])
                backend.scatter(c2, rows, cols, p2)
    for name, total in shared.items():
        poff, pshape = layout.parent_slots[name]
        parent_buf[poff:poff + int(np.prod(pshape))] = (total / len(plans)).reshape(-1)
