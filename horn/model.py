"""A sequential model whose parameters live in one flat buffer.

One contiguous float32 array holds every parameter and another every gradient;
layers see named views into them. So an optimizer step is one fused kernel
over one array, and a barrier is one in-place collective.
"""

import contextlib
import datetime
import math
import numbers

import numpy as np

from horn.accuracy import accuracy
from horn.backends import Backend, get_backend
from horn.errors import HornError, blamed, one_line
from horn.initializers import INITIALIZERS, initialize
from horn.layer import Layer, Loss, as_shape, batch_shape, mix64, shape_size
from horn.npz_header import header_array, read_header
from horn.options import storable
from horn.registry import class_path, is_builtin, resolve
from horn.suggest import did_you_mean

ALIGN = 16  # elements: every view starts on a 64-byte boundary for aligned SIMD loads
FORMAT = "horn-model-1"
# A sanity limit: a spec (job or model file) asking for more parameters than this is
# refused before anything is allocated, instead of failing deep inside numpy.
MAX_PARAMS = 2**31
MAX_SAMPLE_VALUES = 2**31 - 1  # one sample's activations: beyond it no batch fits anywhere


def layer_from_spec(spec, where="layer", classes=None, loss=False):
    """Build a layer (a loss when ``loss``) from ``{"type": name, **options}``; bad
    options, or a loss among the layers, are a clear error.

    ``classes``: a saved model spec's map of registered names to class paths
    (see :func:`horn.registry.resolve`)."""
    import inspect

    if not isinstance(spec, dict) or "type" not in spec:
        raise HornError(f"{where}: expected a table with a 'type' key, found {spec!r}")
    cls = resolve(spec["type"], where, classes)
    if issubclass(cls, Loss) != loss:
        wanted = "a loss (a horn.Loss)" if loss else "a layer (a loss goes in model.loss)"
        found = "a loss" if issubclass(cls, Loss) else "a layer, not a loss"
        raise HornError(f"{where}: expected {wanted}, found {spec['type']!r}, {found}")
    options = {k: v for k, v in spec.items() if k != "type"}
    for key, value in options.items():
        bad = _not_plain(value)
        if bad is not None:  # specs are saved as JSON: dates, NaN or Inf cannot round-trip
            raise HornError(
                f"{where}: option {key!r} for layer {spec['type']!r}: expected "
                f"finite numbers, strings, booleans, lists or tables, found {bad!r}"
            )
    params = inspect.signature(cls.__init__).parameters
    for key in options:
        if key not in params:
            raise HornError(
                f"{where}: unknown option {key!r} for layer {spec['type']!r}"
                f"{did_you_mean(key, params)}"
            )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise HornError(f"{where} ({spec['type']}): {exc}") from None


def _classes(classes):
    """A spec's ``classes`` table, checked: registered name -> ``"module:Class"``."""
    if not isinstance(classes, dict):
        raise HornError(
            f"model spec: classes: expected a table of layer type names to "
            f"'module:Class' strings, found {type(classes).__name__}"
        )
    bad = next(((k, v) for k, v in classes.items() if not isinstance(v, str)), None)
    if bad:
        raise HornError(
            f"model spec: classes: expected a 'module:Class' string for "
            f"{bad[0]!r}, found {type(bad[1]).__name__}"
        )
    return classes


def _not_plain(value):
    """The first NaN/Inf or date/time inside an option value (TOML and JSON can hold them,
    a saved spec cannot round-trip them), else None. Python values (callables) pass."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return None if math.isfinite(value) else value
    if isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        return next((bad for bad in map(_not_plain, items) if bad is not None), None)
    return None


def layout(layers, in_features):
    """Where each declared parameter lives in a flat buffer.

    Calls ``build`` on each (fresh) layer with one sample's shape (an int or a tuple,
    see :func:`horn.layer.as_shape`); returns ``[(layer index, ParamSpec, offset)]``,
    the output shape, the buffer size and the size of its trainable prefix (every
    ``trainable=False`` statistic is placed after all trainable parameters, so an
    optimizer steps one contiguous prefix). Cheap: nothing is allocated, so the
    layout of another rank's sub-network can be computed locally.
    """
    features, declared = as_shape(in_features), []
    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.spec()['type']})"
        rank = 1 if isinstance(features, int) else len(features)
        if layer.input_rank is not None and layer.input_rank != rank:
            wants, hint = (
                ("flat vectors", "put a flatten layer before it")
                if layer.input_rank == 1
                else (
                    f"samples of {layer.input_rank} axes",
                    "set model.inputs to an image shape or use image data",
                )
            )
            raise HornError(f"{where} takes {wants}, found samples of shape {features}: {hint}")
        try:
            built = layer.build(features)
        except ValueError as exc:  # the layer's own word on what does not fit
            raise HornError(f"{where}: {exc}") from None
        except (Exception, SystemExit) as exc:  # the layer's own bug, named on one line
            exc = blamed(exc, "in build()")
            raise HornError(f"{where}: {type(exc).__name__}: {one_line(exc)}") from exc
        out = as_shape(built)
        if out is None:
            raise HornError(
                f"layer {i} ({layer.spec()['type']}): build() must return a "
                f"positive output width or a shape tuple of them, returned "
                f"{built!r}"
            )
        if math.prod((out,) if isinstance(out, int) else out) > MAX_SAMPLE_VALUES:
            raise HornError(  # here, not at the first layer it makes too large
                f"{where}: outputs samples of shape {out}, more than {MAX_SAMPLE_VALUES} "
                f"values each; refusing to build it"
            )
        for spec in layer._specs:
            where = f"layer {i} ({layer.spec()['type']}): parameter {spec.name!r}"
            if not (
                callable(spec.init) or (isinstance(spec.init, str) and spec.init in INITIALIZERS)
            ):
                raise HornError(
                    f"{where}: expected an initializer ({', '.join(INITIALIZERS)}), "
                    f"found {spec.init!r}"
                )
            if any(d < 0 for d in spec.shape):
                raise HornError(f"{where}: expected a shape of sizes >= 0, found {spec.shape}")
            declared.append((i, spec, where))
        features = out
    placed, offset, trainable = [], 0, 0
    for i, spec, where in sorted(declared, key=lambda d: not d[1].trainable):  # stable
        placed.append((i, spec, offset))
        offset += -(-math.prod(spec.shape) // ALIGN) * ALIGN  # exact: np.prod can wrap around
        if offset > MAX_PARAMS:
            raise HornError(
                f"{where}: shape {spec.shape} takes the model past {MAX_PARAMS} "
                f"parameters; refusing to allocate it"
            )
        if spec.trainable:
            trainable = offset
    return placed, features, offset, trainable


def spec_layout(spec):
    """:func:`layout` of a model spec: ``[(qualified name, offset, shape)]`` and the size."""
    classes = spec.get("classes")
    layers = [layer_from_spec(s, classes=classes) for s in spec["layers"]]
    placed, _, size, _ = layout(layers, spec["in_features"])
    return [(f"{i}.{p.name}", off, p.shape) for i, p, off in placed], size


class Model:
    """Layers + a loss over flat parameter/gradient buffers on one backend."""

    def __init__(
        self,
        layers,
        loss,
        in_features,
        backend="numpy",
        seed=0,
        dtype=np.float32,
        initialize_params=True,
    ):
        self.layers = list(layers)
        self.loss = loss
        self.in_features = as_shape(in_features)  # one sample: an int, or a tuple (C, H, W)
        if self.in_features is None:
            raise HornError(
                f"the model's input shape must be a positive integer or a tuple "
                f"of them, found {in_features!r}"
            )
        self.backend = backend if isinstance(backend, Backend) else get_backend(backend)
        self.xp = self.backend.xp
        self.dtype = np.dtype(dtype)
        self.seed = int(seed)  # initial parameters
        self.mask_seed = self.seed  # dropout/DropConnect keys: differs per rank
        self.mask_draws = 0  # how many mask keys were drawn: saved so a resumed run draws the same
        if not isinstance(loss, Loss):
            raise HornError(f"the model's loss must be a horn.Loss, found {type(loss).__name__}")
        self._build(initialize_params)

    # ---- construction --------------------------------------------------------
    def _bind(self, layer):
        layer.xp, layer.ops, layer.dtype = self.xp, self.backend, self.dtype
        layer._keys = self._next_key

    def _build(self, initialize_params):
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer) or isinstance(layer, Loss):
                raise HornError(f"layer {i}: expected a horn.Layer, found {type(layer).__name__}")
            self._bind(layer)
            layer.needs_input_grad = i > 0
        placed, features, self.size, self.trainable_size = layout(self.layers, self.in_features)
        self._bind(self.loss)
        self.loss.build(features)
        self.out_features = features
        self.params = self.xp.zeros(self.size, dtype=self.dtype)
        self.grads = self.xp.zeros(self.size, dtype=self.dtype)
        self.slots = []  # (qualified name, layer, offset, shape): the layout of the buffers
        rng = np.random.default_rng(self.seed)
        host = np.zeros(self.size, dtype=self.dtype)
        for index, spec, off in placed:
            layer = self.layers[index]
            view = slice(off, off + spec.size)
            layer.params[spec.name] = self.params[view].reshape(spec.shape)
            layer.grads[spec.name] = self.grads[view].reshape(spec.shape)
            if initialize_params:
                host[view] = initialize(
                    spec.init, rng, spec.shape, spec.fan_in, spec.fan_out
                ).reshape(-1)
            self.slots.append((f"{index}.{spec.name}", layer, off, spec.shape))
        if initialize_params:
            self.params[...] = self.backend.asarray(host)
        # trainable parameters sit in layer order: after layer i's backward, the
        # gradients from its first trainable offset to the prefix's end are final
        self._ready_from = [self.trainable_size] * (len(self.layers) + 1)
        for i in reversed(range(len(self.layers))):
            own = [off for index, spec, off in placed if index == i and spec.trainable]
            self._ready_from[i] = min([self._ready_from[i + 1], *own])
        self._backward_hooks = []

    @classmethod
    def from_spec(cls, spec, backend="numpy", seed=0, dtype=np.float32, initialize_params=True):
        if not (isinstance(spec, dict) and isinstance(spec.get("layers"), list) and "loss" in spec):
            found = f"keys {sorted(spec)}" if isinstance(spec, dict) else type(spec).__name__
            raise HornError(
                f"model spec: expected a table with in_features, layers (a list) and "
                f"loss, found {found}"
            )
        n = spec.get("in_features")
        if isinstance(n, list):
            if as_shape(n) is None or shape_size(as_shape(n)) > MAX_PARAMS:
                raise HornError(
                    f"model spec: in_features: expected a sample shape of "
                    f"positive integers (at most {MAX_PARAMS} values), found "
                    f"{str(n)[:80]}"
                )
        elif isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise HornError(
                f"model spec: in_features: expected a positive integer, found "
                f"{n if isinstance(n, (int, float, str)) else type(n).__name__!r}"
            )
        classes = _classes(spec.get("classes", {}))
        layers = [
            layer_from_spec(s, f"model.layers[{i}]", classes) for i, s in enumerate(spec["layers"])
        ]
        loss = layer_from_spec(spec["loss"], "model.loss", classes, loss=True)
        return cls(layers, loss, spec["in_features"], backend, seed, dtype, initialize_params)

    def spec(self):
        """What rebuilds the model: its input shape, layer and loss specs, and (when it has
        layers of a user's own) ``classes``: each one's registered name -> ``module:Class``,
        so a model file names the module that must be imported to load it again."""
        shape = self.in_features
        spec = {
            "in_features": shape if isinstance(shape, int) else list(shape),
            "layers": [l.spec() for l in self.layers],
            "loss": self.loss.spec(),
        }
        classes = {
            type(l).type_name: class_path(type(l))
            for l in [*self.layers, self.loss]
            if type(l).type_name and not is_builtin(type(l)) and class_path(type(l))
        }
        if classes:
            spec["classes"] = classes
        return spec

    @property
    def input_size(self):
        """Values per input sample: data always arrives flat, (n, input_size)."""
        return shape_size(self.in_features)

    @property
    def num_params(self):
        return sum(int(np.prod(shape)) for *_, shape in self.slots)

    def _next_key(self):
        if self.fixed_mask_key is not None:
            return self.fixed_mask_key
        self.mask_draws += 1
        return mix64(self.mask_seed, self.mask_draws)

    fixed_mask_key = None  # set_fixed_mask_key(): check_layer's deterministic masks

    def set_fixed_mask_key(self, key):
        """Make every mask key ``key``: a masked layer then computes a fixed function
        (what finite differences need). ``None`` restores the per-draw keys."""
        self.fixed_mask_key = key

    @contextlib.contextmanager
    def using_loss(self, loss):
        """Train with ``loss`` for the duration (distillation's soft targets), bound to
        this model's backend, dtype and key source as the model's own loss is."""
        own = self.loss
        self._bind(loss)
        loss.build(self.out_features)
        self.loss = loss
        try:
            yield self
        finally:
            self.loss = own

    # ---- compute ---------------------------------------------------------------
    def forward(self, x, train=False):
        """Output for ``x``: flat rows (n, input_size) or already (n, *in_features)."""
        if not isinstance(self.in_features, int) and x.ndim == 2:
            x = x.reshape(batch_shape(len(x), self.in_features))  # a view: rows are C-order images
        for i, layer in enumerate(self.layers):
            try:
                x = layer.forward(x, train)
            except (Exception, SystemExit) as exc:
                raise blamed(exc, f"in forward of layer {i} ({layer.spec()['type']})")  # noqa: B904
        return x

    def train_step(self, x, targets):
        """Forward, loss, backward: fills ``self.grads`` and returns the loss."""
        self._train_output = self.forward(x, train=True)
        value = self.loss.forward(self._train_output, targets)
        dy = self.loss.backward()
        for i in reversed(range(len(self.layers))):
            try:
                dy = self.layers[i].backward(dy)
            except (Exception, SystemExit) as exc:
                where = f"in backward of layer {i} ({self.layers[i].spec()['type']})"
                raise blamed(exc, where)  # noqa: B904
            for hook in self._backward_hooks:
                hook(i, self._ready_from[i])
        return value

    def add_backward_hook(self, hook):
        """Call ``hook(index, ready)`` in every :meth:`train_step` right after layer
        ``index``'s backward (last layer first, any layer, a user's own included): from
        then on ``grads[ready:trainable_size]`` hold this step's final gradients. For
        work that overlaps the rest of backward, such as reducing finished gradients."""
        self._backward_hooks.append(hook)

    def correct(self, labels):
        """How many of the last :meth:`train_step` batch's rows the model got right
        (``labels`` on the model's backend): training accuracy without a second forward."""
        return int((self._train_output.argmax(axis=1) == labels).sum())

    def predict(self, x, batch_size=2048):
        """Predictions (e.g. class probabilities) for host array x, as a host array."""
        out = np.empty(batch_shape(len(x), self.out_features), dtype=np.float32)
        pred = self.xp.empty(
            batch_shape(min(batch_size, max(len(x), 1)), self.out_features), self.dtype
        )
        for lo in range(0, len(x), batch_size):
            xb = self.backend.asarray(np.ascontiguousarray(x[lo : lo + batch_size], self.dtype))
            part = pred[: len(xb)]
            self.loss.predict(self.forward(xb, train=False), part)
            out[lo : lo + len(xb)] = self.backend.to_host(part)
        return out

    def accuracy(self, x, y):
        return accuracy(self.predict(x), y)

    def first_nonfinite(self):
        """Name of the first parameter or gradient holding NaN/Inf, or None."""
        for kind, buf in (("parameter", self.params), ("gradient", self.grads)):
            if self.backend.all_finite(buf):
                continue
            for name, layer, off, shape in self.slots:
                size = int(np.prod(shape))
                if not self.backend.all_finite(buf[off : off + size]):
                    index, pname = name.split(".", 1)
                    return f"{kind} {pname!r} of layer {index} ({layer.spec()['type']})"
        return None

    # ---- files -----------------------------------------------------------------
    def state_arrays(self):
        """Named host copies of every parameter (the model file's content)."""
        host = self.backend.to_host(self.params)
        return {
            f"param/{name}": host[off : off + int(np.prod(shape))].reshape(shape)
            for name, _, off, shape in self.slots
        }

    def load_arrays(self, arrays, source="model file"):
        for name, _, off, shape in self.slots:
            key = f"param/{name}"
            if key not in arrays:
                raise HornError(f"{source}: missing array {key!r}")
            value = np.asarray(arrays[key])
            if value.dtype.kind not in "biuf":
                raise HornError(
                    f"{source}: array {key!r} has dtype {value.dtype}, expected real numbers"
                )
            if value.shape != tuple(shape):
                raise HornError(
                    f"{source}: array {key!r} has shape {value.shape}, the model "
                    f"expects {tuple(shape)}"
                )
            with np.errstate(over="ignore"):  # beyond float32 becomes Inf: callers check
                value = value.reshape(-1).astype(self.dtype)
            self.params[off : off + value.size] = self.backend.asarray(value)

    def check_storable(self, where="model.layers"):
        """Refuse, before any training, a layer option that a model file cannot hold (a
        user layer's default such as ``fn=abs``, ``np.float32(1)`` or NaN): otherwise the
        run would fail at its first save, after the work."""
        for i, layer in enumerate([*self.layers, self.loss]):
            label = f"layer {i}" if i < len(self.layers) else "the loss"
            for option, value in layer.config.items():
                if not storable(value):
                    raise HornError(
                        f"{where}: {label} ({layer.spec()['type']}): option {option!r} is "
                        f"{value!r}, which a model file cannot hold: expected None, a bool, "
                        f"an int, a finite float, a string, or a list or table of them (set "
                        f"it in the job, or give the layer such a default)"
                    )

    def save(self, path, meta=None):
        """Write ``path`` (.npz): named parameter arrays plus the JSON spec. No pickle."""
        self.check_storable(str(path))
        header = {"format": FORMAT, "spec": self.spec(), "meta": meta or {}}
        arrays = self.state_arrays()
        arrays["__header__"] = header_array(header)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path, backend="numpy"):
        """Rebuild a model saved by :meth:`save`; returns ``(model, meta)``."""
        arrays = read_npz(path)
        header = read_header(arrays, path, required=("format", "spec"))
        fmt, spec, meta = header["format"], header["spec"], header.get("meta", {})
        if fmt != FORMAT:
            raise HornError(f"{path}: expected format {FORMAT!r}, found {fmt!r}")
        if not isinstance(meta, dict):
            raise HornError(
                f"{path}: expected the header's meta to be a table, found {type(meta).__name__}"
            )
        try:  # every parameter comes from the file: no initialization, only zeroed buffers
            model = cls.from_spec(spec, backend, initialize_params=False)
        except HornError as exc:
            raise HornError(f"{path}: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise HornError(f"{path}: malformed model spec: {exc}") from None
        model.load_arrays(arrays, str(path))
        bad = model.first_nonfinite()
        if bad:
            raise HornError(f"{path}: expected finite parameters, found NaN or Inf in {bad}")
        return model, meta


def read_npz(path):
    """All arrays of an .npz file, refusing pickled objects; a clear error otherwise.

    The same strict reader as data files (:func:`horn.data.read_npz`): every header is
    checked before numpy reads it, so a forged one cannot allocate absurd memory.
    """
    from horn.data import read_npz as read

    return read(path)
