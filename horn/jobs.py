"""Job files: TOML (or the resolved JSON a run writes) -> validated, frozen dataclasses.

Every problem is one line naming the file, the line where it can be found, the
key, what was expected and what was found; unknown keys get a "did you mean".
"""

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from horn.backends import BACKEND_NAMES
from horn.data import DATASET_NAMES, SCALE_KINDS
from horn.errors import HornError
from horn.options import FLOAT32_MAX
from horn.paths import expand_home
from horn.suggest import did_you_mean


def opt(
    default,
    kind,
    choices=None,
    lo=None,
    hi=None,
    lo_open=False,
    hi_open=False,
    nullable=False,
    path=False,
):
    """A job key: its default, type and allowed values (checked by :func:`_convert`).

    ``path`` marks a file name, ``~`` expanded like every other (:func:`_expand`): True,
    relative to the job file's directory; "cwd", to the current one; "imports", a list
    of modules whose path entries are file names (relative as :mod:`horn.registry` says).
    """
    meta = dict(
        kind=kind,
        choices=choices,
        lo=lo,
        hi=hi,
        lo_open=lo_open,
        hi_open=hi_open,
        nullable=nullable,
        path=path,
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataSection:
    name: str = opt("digits", str, DATASET_NAMES)
    path: str = opt(None, str, nullable=True, path=True)
    root: str = opt(None, str, nullable=True, path=True)
    val_fraction: float = opt(0.1, float, lo=0.0, hi=1.0, hi_open=True)
    test_fraction: float = opt(0.2, float, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    scale: str = opt("unit", str, SCALE_KINDS)
    seed: int = opt(0, int, lo=0)  # the validation split (the test split never moves)
    limit: int = opt(None, int, lo=1, nullable=True)
    label_column: int = opt(-1, int)


@dataclass(frozen=True)
class ModelSection:
    layers: list = opt([], list)
    loss: object = opt("softmax_cross_entropy", (str, dict))
    inputs: object = opt(None, (int, list), nullable=True)  # 784, or a shape [1, 28, 28]
    imports: list = opt([], list, path="imports")  # modules with the job's own layers


@dataclass(frozen=True)
class TrainSection:
    epochs: int = opt(10, int, lo=1)
    steps: int = opt(0, int, lo=0)
    batch_size: int = opt(64, int, lo=1, hi=1 << 20)
    optimizer: str = opt("sgd", str, ("sgd", "adam"))
    lr: float = opt(0.05, float, lo=0.0, lo_open=True)
    momentum: float = opt(0.9, float, lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = opt(False, bool)
    weight_decay: float = opt(0.0, float, lo=0.0)
    beta1: float = opt(0.9, float, lo=0.0, hi=1.0, hi_open=True)
    beta2: float = opt(0.999, float, lo=0.0, hi=1.0, hi_open=True)
    eps: float = opt(1e-8, float, lo=0.0, lo_open=True)
    schedule: str = opt("cosine", str, ("constant", "step", "cosine"))
    warmup_steps: int = opt(0, int, lo=0)
    step_size: int = opt(1000, int, lo=1)
    gamma: float = opt(0.1, float, lo=0.0, lo_open=True)
    min_lr: float = opt(0.0, float, lo=0.0)
    seed: int = opt(0, int, lo=0)
    backend: str = opt("auto", str, BACKEND_NAMES)
    threads: int = opt(0, int, lo=0)
    eval_every: int = opt(1, int, lo=1)
    eval_steps: int = opt(0, int, lo=0)  # also validate at the first round end past every N steps
    on_nan: str = opt("stop", str, ("stop", "skip_batch"))
    early_stop: dict = opt({}, dict)  # {patience, min_delta}: see EarlyStopSection


@dataclass(frozen=True)
class EarlyStopSection:
    """``train.early_stop``: stop once validation accuracy has not risen by more than
    ``min_delta`` for ``patience`` evaluations in a row (an empty table: never stop)."""

    patience: int = opt(5, int, lo=1)
    min_delta: float = opt(0.0, float, lo=0.0, hi=1.0)


@dataclass(frozen=True)
class ParallelSection:
    """The layout and the rounds; each strategy's own keys are in its ``[parallel.NAME]``
    table (``settings``), declared in the strategy's module (horn.barriers.registry)."""

    groups: int = opt(0, int, lo=0)
    workers: int = opt(1, int, lo=1)
    local_steps: int = opt(1, int, lo=1)
    barrier: str = opt("average", str)  # a group strategy's name: checked against the registry
    global_every: int = opt(1, int, lo=1)
    watchdog_s: float = opt(300.0, float, lo=0.0, lo_open=True)
    shard: str = opt("iid", str, ("iid", "dirichlet"))
    shard_alpha: float = opt(0.5, float, lo=0.0, lo_open=True)
    settings: dict = field(default_factory=dict, metadata={"table": True})

    def of(self, strategy):
        """The settings of ``strategy`` (its defaults when the job has no table for it)."""
        return self.settings[strategy]


@dataclass(frozen=True)
class CheckpointSection:
    every: int = opt(0, int, lo=0)
    keep_last: int = opt(2, int, lo=1)


@dataclass(frozen=True)
class LogSection:
    dir: str = opt("runs", str, path="cwd")
    progress: str = opt("lines", str, ("lines", "none"))
    plot: bool = opt(True, bool)


SECTIONS = {
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "parallel": ParallelSection,
    "checkpoint": CheckpointSection,
    "log": LogSection,
}
TOP_LEVEL = ("name", "description")
NAME = r"[\w.\-]{1,64}"  # a job's name: it names the run directory


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    data: DataSection
    model: ModelSection
    train: TrainSection
    parallel: ParallelSection
    checkpoint: CheckpointSection
    log: LogSection
    source: str = ""  # the file it came from: relative data paths resolve against its directory
    overrides: tuple = ()  # ((key parts), "KEY=VALUE"): what --set changed, for error messages

    def to_dict(self):
        doc = {"name": self.name, "description": self.description}
        for key in SECTIONS:
            doc[key] = dataclasses.asdict(getattr(self, key))
        # back to [parallel.NAME] tables: the strategies this job uses, so a resolved job
        # reads back wherever those are known (not only where the same ones were imported)
        from horn.barriers.registry import worker_strategy

        tables = doc["parallel"].pop("settings")
        used = (self.parallel.barrier, worker_strategy().name)
        doc["parallel"].update({name: tables[name] for name in used})
        return doc

    def digest(self):
        """A hash of the resolved job: ranks compare it to be sure they run the same job."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def locate(self, *path):
        """Where a problem with the key ``path`` (e.g. "model", "layers", "2") comes from:
        ``--set 'KEY=VALUE'`` when an override set it (or a table above or below it),
        else the job file."""
        item = _set_item(self.overrides, path)
        return f"--set {item!r}" if item else self.source

    @property
    def base_dir(self):
        return str(Path(self.source).resolve().parent) if self.source else None


# ---- loading -----------------------------------------------------------------------
def load_job(path, overrides=()):
    """Read, override (``section.key=value`` strings) and validate a job file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HornError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HornError(f"{path}: cannot read job file: {exc}") from None
    kind = path.suffix.lstrip(".") or "TOML"
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, JSONDecodeError, or an integer over 4300 digits
        raise HornError(f"{path}: malformed {kind}: {exc}") from None
    except RecursionError:
        raise HornError(f"{path}: malformed {kind}: arrays or tables nested too deeply") from None
    if not isinstance(doc, dict):
        raise HornError(f"{path}: expected a table of sections, found {type(doc).__name__}")
    applied = tuple((apply_override(doc, item), item) for item in overrides)
    return job_from_dict(doc, str(path), text, default_name=path.stem, overrides=applied)


def apply_override(doc, item):
    """Apply ``a.b.c=value`` to the parsed job; value is a TOML value or a bare string.
    Returns the key's parts (so errors about it can name the ``--set``)."""
    if "=" not in item:
        raise HornError(f"--set {item!r}: expected KEY=VALUE, for example train.lr=0.05")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise HornError(f"--set {item!r}: malformed key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (ValueError, RecursionError):  # not a TOML value (or absurdly long/nested)
        value = raw.strip()
    node, path = doc, []  # path: the parts with list indices as plain numbers ("01" -> "1")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            path.append(str(_index(node, part, item)))
            node = node[int(path[-1])]
        else:
            path.append(part)
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise HornError(f"--set {item!r}: {'.'.join(parts[: i + 1])!r} is not a table")
    if isinstance(node, list):
        path.append(str(_index(node, parts[-1], item)))
        node[int(path[-1])] = value
    else:
        path.append(parts[-1])
        node[parts[-1]] = value
    return tuple(path)


def _index(items, part, item):
    if not (part.isascii() and part.isdigit()) or int(part) >= len(items):
        raise HornError(f"--set {item!r}: expected a list index below {len(items)}, found {part!r}")
    return int(part)


def _line_of(text, section, key):
    """The line number where ``key`` is set inside ``[section]`` (None if not found)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[+\s*([\w.\-]+)\s*\]+", line)
        if header:
            current = header.group(1)
            if current == (f"{section}.{key}" if section else key):  # [data] or [parallel.x]
                return number
            continue
        if current == section and re.match(rf"\s*{re.escape(key or '')}\s*=", line):
            return number
        if (
            section
            and current is None
            and re.match(rf"\s*{re.escape(section)}\.{re.escape(key or '')}\s*=", line)
        ):
            return number
    return None


def _set_item(overrides, path):
    """The last ``--set`` item whose key is ``path``, inside it or above it, else None."""
    path = tuple(str(p) for p in path)
    for parts, item in reversed(overrides):
        n = min(len(parts), len(path))
        if tuple(parts[:n]) == path[:n]:
            return item
    return None


def _where(source, text, section, key, overrides=()):
    shown = ".".join(_shown(part) for part in section.split(".")) + "." if section else ""
    item = _set_item(overrides, (*section.split("."), key) if section else (key,))
    if item:
        return f"--set {item!r}: {shown}{_shown(key)}"
    line = _line_of(text, section, key) if text else None
    loc = f"{source}:{line}" if line else source
    return f"{loc}: {shown}{_shown(key)}"


def _shown(key):
    """A key as a message shows it: bare when plain, else quoted with escapes (keeps one line)."""
    return key if re.fullmatch(r"[\w.\-]+", key) else repr(key)


def _describe(meta):
    kind = meta["kind"]
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
        (int, list): "an integer or a list of them",
    }
    base = names.get(kind, "a string or a table")
    if meta["choices"]:
        base = "one of " + ", ".join(repr(c) for c in meta["choices"])
    bounds = []
    if meta["lo"] is not None:
        bounds.append(f"{'>' if meta['lo_open'] else '>='} {meta['lo']}")
    if meta["hi"] is not None:
        bounds.append(f"{'<' if meta['hi_open'] else '<='} {meta['hi']}")
    return base + (" " + " and ".join(bounds) if bounds else "")


def _convert(value, meta, where):
    """``value`` checked against ``meta``; ``where()`` names it in errors (finding the line
    costs a scan of the file, so only an error pays for it)."""
    kind = meta["kind"]
    if value is None and meta["nullable"]:
        return None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value, ok = float(value), True
        except OverflowError:  # an integer beyond any float
            ok = False
    if not ok or (meta["choices"] and value not in meta["choices"]):
        raise HornError(f"{where()}: expected {_describe(meta)}, found {value!r}")
    if kind in (int, float):
        lo, hi = meta["lo"], meta["hi"]
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or (lo is not None and (value < lo or (meta["lo_open"] and value == lo)))
            or (hi is not None and (value > hi or (meta["hi_open"] and value == hi)))
        ):
            raise HornError(f"{where()}: expected {_describe(meta)}, found {value!r}")
        if kind is float and abs(value) > FLOAT32_MAX:  # training computes in float32
            raise HornError(
                f"{where()}: expected {_describe(meta)} within float32 range "
                f"(|x| <= {FLOAT32_MAX:.4g}), found {value!r}"
            )
    return _expand(value, meta["path"], where) if meta.get("path") else value


def _expand(value, rule, where):
    """A path key's value with ``~`` expanded: one rule for every file name a job holds,
    so the code that opens it never sees a ``~`` (for model.imports, its path entries)."""
    if rule == "imports":
        from horn.registry import is_path_entry

        return [
            expand_home(entry, lambda i=i: f"{where()}[{i}]")
            if isinstance(entry, str) and is_path_entry(entry)
            else entry
            for i, entry in enumerate(value)
        ]
    if "\x00" in value:  # no file system takes one
        raise HornError(f"{where()}: expected a file name, found one with a NUL byte: {value!r}")
    return expand_home(value, where)


def key_fields(cls):
    """The job keys of a section class (its strategy tables aside)."""
    return [f for f in dataclasses.fields(cls) if "table" not in f.metadata]


def _section(cls, table, source, text, name, moved=None, overrides=()):
    if not isinstance(table, dict):
        parent, _, key = name.rpartition(".")  # "parallel.average": key average of parallel
        raise HornError(
            f"{_where(source, text, parent or None, key, overrides)}: expected a table, "
            f"found {table!r}"
        )
    fields = {f.name: f for f in key_fields(cls)}
    values = {}
    for key, value in table.items():
        if moved and key in moved:
            raise HornError(
                f"{_where(source, text, name, key, overrides)}: moved; set it as {moved[key]}"
            )
        if key not in fields:
            raise HornError(
                f"{_where(source, text, name, key, overrides)}: unknown key"
                f"{did_you_mean(key, fields)}; known: {', '.join(fields)}"
            )
        values[key] = _convert(
            value, fields[key].metadata, lambda key=key: _where(source, text, name, key, overrides)
        )
    return cls(**values)


def _parallel(table, source, text, overrides=()):
    """``[parallel]``: the layout keys, then one settings table per registered strategy."""
    from horn.barriers.registry import group_strategy, moved_keys, strategies

    def where(section, key):
        return _where(source, text, section, key, overrides)

    if not isinstance(table, dict):
        raise HornError(f"{where(None, 'parallel')}: expected a table, found {table!r}")
    known = strategies()
    flat = {k: v for k, v in table.items() if k not in known}
    section = _section(ParallelSection, flat, source, text, "parallel", moved_keys(), overrides)
    settings = {
        name: _section(
            s.settings, table.get(name, {}), source, text, f"parallel.{name}", overrides=overrides
        )
        for name, s in known.items()
    }
    group_strategy(section.barrier, where("parallel", "barrier"))
    for name, strategy in known.items():
        if (
            strategy.scope == "group"
            and name != section.barrier
            and name in table
            and settings[name] != strategy.settings()
        ):
            raise HornError(
                f"{where('parallel', name)}: applies only to "
                f"barrier = {name!r}, found barrier = {section.barrier!r}"
            )
    section = dataclasses.replace(section, settings=settings)
    for name in (section.barrier, next(n for n, s in known.items() if s.scope == "worker")):
        settings[name].check(section, lambda key, table=name: where(f"parallel.{table}", key))
    return section


def job_from_dict(doc, source="<job>", text="", default_name="job", overrides=()):
    """The validated job of a parsed document; ``overrides`` are ``((key parts), item)``
    pairs of the ``--set`` items applied to it (errors about those keys name them)."""
    for key in doc:
        if key not in SECTIONS and key not in TOP_LEVEL:
            raise HornError(
                f"{_where(source, text, None, key, overrides)}: unknown section or "
                f"key{did_you_mean(key, list(SECTIONS) + list(TOP_LEVEL))}; "
                f"known: {', '.join(list(SECTIONS) + list(TOP_LEVEL))}"
            )
    sections = {
        name: _section(cls, doc.get(name, {}), source, text, name, overrides=overrides)
        for name, cls in SECTIONS.items()
        if name != "parallel"
    }
    sections["parallel"] = _parallel(doc.get("parallel", {}), source, text, overrides)
    name = _job_name(doc, source, text, default_name, overrides)
    sections["train"] = _with_early_stop(sections["train"], source, text, overrides)
    job = Job(
        name=name,
        description=str(doc.get("description", "")),
        source=source,
        overrides=tuple(overrides),
        **sections,
    )
    _check_model(job, text)
    _check_parallel(job, text)
    return job


def _job_name(doc, source, text, default_name, overrides):
    """The job's name: its ``name`` key, else ``default_name`` (the file's stem), which
    the message then blames, since the user never wrote a name."""
    name = doc.get("name", default_name)
    if isinstance(name, str) and re.fullmatch(NAME, name):
        return name
    expected = "expected a short name of letters, digits, '-', '_' or '.'"
    if "name" in doc:
        raise HornError(
            f"{_where(source, text, None, 'name', overrides)}: {expected}, found {name!r}"
        )
    example = re.sub(r"[^\w.\-]+", "-", name).strip("-")[:64] or "job"
    raise HornError(
        f"{source}: name: {expected}, found {name!r}, taken from the file name as the job "
        f"sets no name; set one, for example name = {example!r}"
    )


def _with_early_stop(train, source, text, overrides=()):
    """``train`` with its early_stop table checked and its defaults filled in."""
    if not train.early_stop:
        return train
    table = _section(
        EarlyStopSection, train.early_stop, source, text, "train.early_stop", overrides=overrides
    )
    return dataclasses.replace(train, early_stop=dataclasses.asdict(table))


def early_stop_settings(train):
    """The job's EarlyStopSection, or None when it never stops early."""
    return EarlyStopSection(**train.early_stop) if train.early_stop else None


def _check_model(job, text):
    from horn.layer import as_shape
    from horn.model import layer_from_spec
    from horn.registry import import_modules

    if job.model.imports:  # imported first: the layers below may be theirs
        import_modules(
            job.model.imports,
            job.base_dir,
            _where(job.source, text, "model", "imports", job.overrides),
        )
    layers = job.model.layers
    if not layers:
        raise HornError(
            f"{_where(job.source, text, 'model', 'layers', job.overrides)}: expected "
            f"a non-empty list of layer tables, found {layers!r}"
        )
    for i, spec in enumerate(layers):
        layer_from_spec(spec, f"{job.locate('model', 'layers', i)}: model.layers[{i}]")
    loss = job.model.loss
    layer_from_spec(
        {"type": loss} if isinstance(loss, str) else loss,
        f"{job.locate('model', 'loss')}: model.loss",
        loss=True,
    )
    inputs = job.model.inputs
    if inputs is not None and as_shape(inputs) is None:
        raise HornError(
            f"{_where(job.source, text, 'model', 'inputs', job.overrides)}: expected "
            f"a positive integer or a list of them (a sample shape such as "
            f"[1, 28, 28]), found {inputs!r}"
        )


def _check_parallel(job, text):
    p = job.parallel
    if p.shard != "dirichlet" and p.shard_alpha != ParallelSection.shard_alpha:
        raise HornError(
            f"{_where(job.source, text, 'parallel', 'shard_alpha', job.overrides)}: "
            f"applies only to shard = 'dirichlet', found shard = {p.shard!r}"
        )


def loss_spec(job):
    loss = job.model.loss
    return {"type": loss} if isinstance(loss, str) else dict(loss)


def model_spec(job, in_features):
    """The model spec of ``job`` for samples of shape ``in_features`` (int or tuple)."""
    if not isinstance(in_features, int):
        in_features = list(in_features)
    return {
        "in_features": in_features,
        "layers": [dict(s) for s in job.model.layers],
        "loss": loss_spec(job),
    }


def write_resolved(job, path):
    """The fully resolved job (every default filled in, data paths and the job's own
    modules made absolute) as JSON; ``horn run`` (and ``--resume``) accepts it back from anywhere."""
    from horn.registry import located

    doc = job.to_dict()
    doc["model"]["imports"] = [
        found for entry in job.model.imports for found in located(entry, job.base_dir)
    ]
    tables = [(doc[name], getattr(job, name)) for name in SECTIONS]
    tables += [
        (doc["parallel"][name], s)
        for name, s in job.parallel.settings.items()
        if name in doc["parallel"]
    ]
    for table, section in tables:
        for f in dataclasses.fields(section):
            value = table.get(f.name)
            job_relative = f.metadata.get("path") is True  # not log.dir, nor the imports
            if job_relative and value and job.base_dir and not Path(value).is_absolute():
                table[f.name] = str(Path(job.base_dir) / value)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
