"""Sub-networks of a parent network: which units each worker keeps, and moving
weights between the parent and a worker's compact copy.

Everything about the layers comes from their partition protocol (``horn.layer.Layer``:
``partition_role``, ``partition_axes``, ``partition_spec``, ``dropconnect_spec``,
``map_partition``, ``input_scale``; docs/partition.md): no parameter or layer names here.
Worker w's sub-network keeps, for every "split" layer, the entries of its parameters
whose input axis is one of its own input units and whose output axis one of its own
output units (all inputs for the first split layer, all outputs for the last);
"through" layers between them carry the partition on (batch norm's per-channel
parameters follow it). It is stored *compacted* -- a small dense model -- for the
whole round, so local steps run at full BLAS speed; gather and scatter happen once
per round.

Where the scale goes (``scale_at``): "input" multiplies a layer's inputs by s in
every forward and backward pass (``Layer.input_scale``). The gradient of W then
carries a factor s, and so does the input gradient, so SGD on the parent's
coordinates takes steps about s^2 too large for the function the sub-network
computes (x4 units kept out of 4 -> x16 on hidden-to-hidden weights).
"weights" folds s into the gathered weights instead (W_c = s W: every parameter with
an input axis) and divides it out at scatter: the same forward function, but SGD now
runs on the compact network's own coordinates, i.e. a per-layer learning-rate
correction of 1/s^2 with no per-step cost (one pass over the compact block per round).
Optimizer state is folded like the parameters: the SGD velocity is a sum of steps, so
it lives in parameter units.
"""

import math

import numpy as np

from horn.errors import HornError
from horn.model import spec_layout

SCALE_RULES = {
    "inverse": lambda k: 1.0 / k,
    "sqrt": lambda k: 1.0 / math.sqrt(k),
    "none": lambda k: 1.0,
}
SCALE_AT = ("input", "weights")
ROLES = ("split", "through")


class SubnetLayout:
    """The partitionable structure of a parent: its split layers, hidden widths and
    every parameter's partitioned axes, read (and checked) through the protocol."""

    def __init__(self, parent, dropconnect=0.0, scale="inverse", scale_at="input"):
        if scale_at not in SCALE_AT:
            raise HornError(f"sub-networks: scale_at must be one of {SCALE_AT}, found {scale_at!r}")
        self.parent, self.dropconnect, self.scale_rule = parent, dropconnect, SCALE_RULES[scale]
        self.fold = scale_at == "weights"
        self.spec = parent.spec()
        self.split = []  # indices of the layers whose output units are shared out
        self.axes = []  # per layer: {parameter name: (input axis, output axis)}
        widths = []
        units = _units(parent.in_features)  # the input units of the layer at hand
        for i, layer in enumerate(parent.layers):
            where = f"sub-networks: layer {i} ({self.spec['layers'][i]['type']})"
            if layer.partition_role not in ROLES:
                raise HornError(
                    f"{where} does not implement the partition protocol "
                    f"(partition_role {layer.partition_role!r}, expected one of "
                    f"{ROLES}); it cannot be partitioned"
                )
            axes = _checked_axes(layer, units, where)
            self.axes.append(axes)
            if layer.partition_role == "split":
                outs = {layer.params[n].shape[o] for n, (_, o) in axes.items() if o is not None}
                if len(outs) != 1:
                    raise HornError(
                        f"{where}: partition_axes() must give its parameters one "
                        f"output width, found {sorted(outs) or 'none'}"
                    )
                if dropconnect and layer.dropconnect_spec(layer.spec(), dropconnect) is None:
                    raise HornError(
                        f"{where} has no DropConnect variant: sub-networks' "
                        f"dropconnect = {dropconnect} cannot apply to it"
                    )
                self.split.append(i)
                units = outs.pop()
                widths.append(units)
            else:
                units = len(layer.map_partition(np.arange(units, dtype=np.int64)))
        if len(self.split) < 2:
            raise HornError(
                "sub-networks need at least two dense layers (or other layers "
                "that split their output units: a hidden layer to partition)"
            )
        self.sizes = widths[:-1]  # the last split layer's outputs (the classes) stay whole
        self.parent_slots = {name: (off, shape) for name, _, off, shape in parent.slots}

    def plan(self, parts, worker):
        """Worker ``worker``'s sub-network, given each hidden layer's partition ``parts``."""
        return WorkerPlan(self, [p[worker] for p in parts])


def _units(shape):
    """How many units a sample of ``shape`` has: features, or an image's channels."""
    return shape if isinstance(shape, int) else shape[0]


def _checked_axes(layer, units, where):
    """The layer's ``partition_axes()``, refused unless it names every parameter with
    valid, distinct axes and every input axis is ``units`` long."""
    axes = layer.partition_axes()
    if not isinstance(axes, dict) or set(axes) != set(layer.params):
        found = sorted(axes) if isinstance(axes, dict) else type(axes).__name__
        raise HornError(
            f"{where}: partition_axes() must name every parameter "
            f"{sorted(layer.params)}, found {found}"
        )
    for name, pair in axes.items():
        shape = layer.params[name].shape
        ok = (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(a is None or (isinstance(a, int) and 0 <= a < len(shape)) for a in pair)
        )
        if not ok or (pair[0] is not None and pair[0] == pair[1]):
            raise HornError(
                f"{where}: partition_axes()[{name!r}] must be (input axis, output "
                f"axis), each an axis of shape {shape} or None, found {pair!r}"
            )
        if pair[0] is not None and shape[pair[0]] != units:
            raise HornError(
                f"{where}: axis {pair[0]} of parameter {name!r} (shape {shape}) is "
                f"declared to follow the layer's {units} input units, but has "
                f"{shape[pair[0]]} entries"
            )
        if layer.partition_role == "through" and pair[1] is not None:
            raise HornError(
                f"{where}: a 'through' layer's parameters follow its input units; "
                f"partition_axes()[{name!r}] names an output axis"
            )
    return axes


def _matrix(shape):
    """The 2-D view gather and scatter work on: (first axis, the rest); (1, n) for 1-D."""
    return (shape[0], -1) if len(shape) >= 2 else (1, -1)


def _view_index(shape, kept):
    """(rows, cols) of the :func:`_matrix` view that select ``kept`` (axis -> sorted
    indices) from a parameter of ``shape``; None for all of them."""
    lead = 1 if len(shape) >= 2 else 0
    rows = kept.get(0) if lead else None
    rest = shape[lead:]
    picks = [kept.get(a + lead) for a in range(len(rest))]
    if all(p is None for p in picks):
        return rows, None
    grid = np.ix_(*[np.arange(n, dtype=np.int64) if p is None else p for n, p in zip(rest, picks)])
    return rows, np.ravel_multi_index(grid, rest).reshape(-1).astype(np.int64)


class WorkerPlan:
    """One worker's sub-network for one round: its compact spec and, for each of its
    parameters, the (rows, cols) of the parent's :func:`_matrix` view it holds."""

    def __init__(self, layout, units):
        layers = [dict(s) for s in layout.spec["layers"]]
        self.index = {}  # parameter name -> (rows, cols) in the parent, None = all
        self.scales = {}  # split layer index -> the scale rule's factor for its inputs
        kept, j = None, 0  # the input units this worker keeps (None: all)
        for i, layer in enumerate(layout.parent.layers):
            if layer.partition_role == "split":
                out = units[j] if j < len(layout.sizes) else None
                if out is not None:
                    layers[i] = layer.partition_spec(len(out))
                if layout.dropconnect:
                    layers[i] = layer.dropconnect_spec(layers[i], layout.dropconnect)
                if kept is not None:
                    self.scales[i] = layout.scale_rule(len(units[j - 1]) / layout.sizes[j - 1])
                j += 1
            else:
                out = None if kept is None else layer.map_partition(kept)
            for name, (axis_in, axis_out) in layout.axes[i].items():
                picked = {
                    a: k
                    for a, k in ((axis_in, kept), (axis_out, out))
                    if a is not None and k is not None
                }
                self.index[f"{i}.{name}"] = _view_index(layer.params[name].shape, picked)
            kept = out
        self.spec = {**layout.spec, "layers": layers}
        self.slots, self.size = spec_layout(self.spec)
        self.key = tuple(len(u) for u in units)
        # where the factors go: Layer.input_scale, or folded into the gathered weights
        self.input_scales = {} if layout.fold else dict(self.scales)
        self.weight_scales = {
            f"{i}.{name}": s
            for i, s in self.scales.items()
            if layout.fold and s != 1.0
            for name, (axis_in, _) in layout.axes[i].items()
            if axis_in is not None
        }

    def views(self, parent_buf, compact_buf, layout):
        """Yield (name, parent 2-D view, compact 2-D view, rows, cols) per parameter."""
        for name, off, shape in self.slots:
            poff, pshape = layout.parent_slots[name]
            psize = int(np.prod(pshape))
            rows, cols = self.index[name]
            p2 = parent_buf[poff : poff + psize].reshape(_matrix(pshape))
            c2 = compact_buf[off : off + int(np.prod(shape))].reshape(_matrix(shape))
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
        parent_buf[poff : poff + int(np.prod(pshape))] = (total / len(plans)).reshape(-1)
