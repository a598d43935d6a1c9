"""Hostile input (issue 6): fuzz every reader of user files.

Each target feeds 2,000 generated inputs (random bytes or text, and structured
near-misses of the real formats) to one public entry point. The only exception
allowed to escape is HornError, and its message must be one line naming the
input. Whatever loads must be usable (a job resolves to JSON and back, a data
set is finite float32 with in-range labels). Runs are derandomized, so CI sees
the same inputs every time; inputs stay small, so nothing can hang.
"""

import builtins
import importlib
import io
import json
import math
import os
import re
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from horn import registry
from horn.barriers.registry import strategies
from horn.data import load_dataset, load_features
from horn.ensemble_model import FORMAT as ENSEMBLE_FORMAT
from horn.ensemble_model import load_predictor
from horn.errors import HornError
from horn.hosts import check_hostfile
from horn.jobs import SECTIONS, key_fields, load_job, write_resolved
from horn.layer import Loss, batch_shape
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.model import FORMAT, Model, layer_from_spec, spec_layout
from horn.options import FLOAT32_MAX, INT64_MAX, integers_in, matches, option_types
from horn.runner import needed_ranks, prepare

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def only_loaded_modules():
    """Fuzzed layer types name arbitrary modules ("pkg.mod:Cls"). Let horn import only
    modules that are already loaded (or horn's own), so a generated name can never run
    some real module's import-time code; any other name behaves as a missing module."""
    real = importlib.import_module

    class Guard:
        @staticmethod
        def import_module(name, package=None):
            if name in sys.modules or name == "horn" or name.startswith("horn."):
                return real(name, package)
            raise ModuleNotFoundError(f"No module named {name!r}")

    patch = pytest.MonkeyPatch()
    patch.setattr(registry, "importlib", Guard)
    yield
    patch.undo()


def only_horn_errors(call, *names):
    """``call()``'s result, or None after a HornError: one line naming one of ``names``.

    Any other exception propagates and fails the test (hypothesis shrinks the input).
    """
    try:
        result = call()
    except HornError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert not names or any(n in message for n in names), message
        if currently_in_test_context():
            event("refused with HornError")
        return None
    if currently_in_test_context():
        event("accepted")
    return result


TEXT = st.characters(exclude_categories=("Cs",))  # no lone surrogates: they cannot be written
NASTY_CHARS = [
    "\x00",
    "\x7f",
    "\r",
    "\t",
    "\x0b",
    "\x85",
    "\u2028",
    "\ufeff",
    "é",
    "\u0663",
    "\u00b2",
    "\uff11",
    "\U0001f600",
]


# =========================================================================== job files
GOOD_JOB = """name = "t"
[model]
layers = [{ type = "dense", units = 8, activation = "relu" }, { type = "dense", units = 3 }]
[train]
epochs = 2
lr = 0.1
"""


class Big(str):
    """A long string that prints short, so failure reports stay readable."""

    def __repr__(self):
        return (
            f"<{len(self)} chars: {str.__repr__(self[:12])}...>"
            if len(self) > 40
            else str.__repr__(self)
        )


class Raw(Big):
    """A TOML literal written as is (dates, huge integers, deep nesting)."""


def toml_key(key):
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(value):
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings share JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc, array_tables):
    """TOML text for ``doc``: tables as [headers]; lists of tables maybe as [[headers]]."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if not isinstance(table, dict):
            continue
        lines.append(f"[{toml_key(name)}]")
        later = []
        for key, value in table.items():
            if (
                array_tables
                and isinstance(value, list)
                and value
                and all(isinstance(v, dict) and not isinstance(v, Raw) for v in value)
            ):
                later.append((key, value))
            else:
                lines.append(f"{toml_key(key)} = {toml_value(value)}")
        for key, items in later:
            for item in items:
                lines.append(f"[[{toml_key(name)}.{toml_key(key)}]]")
                lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


SPECIAL_FLOATS = [0.0, -0.0, 1.0, 0.5, 1e-300, 1e300, 5e-324, math.nan, math.inf, -math.inf]
SPECIAL_INTS = [0, -1, 1, 2, 2**31, 2**31 - 1, 2**63 - 1, -(2**63), 2**64, 10**12, 10**30]
JUNK_KEYS = st.one_of(
    st.sampled_from(
        [
            "lrr",
            "epoch",
            "Layers",
            "",
            " ",
            "a.b",
            "type",
            "units",
            "\n",
            "x\ny",
            "\x00",
            "é",
            "self",
            "kwargs",
            "args",
        ]
    ),
    st.text(TEXT, max_size=6),
)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-3, 100),
    st.sampled_from(SPECIAL_INTS),
    st.integers(-(2**80), 2**80),
    st.sampled_from(SPECIAL_FLOATS),
    st.floats(),
    st.text(TEXT, max_size=10),
    st.sampled_from(["", "dense", "relu", "sgd", "digits", "os:system", "nan", "1"] + NASTY_CHARS),
    st.sampled_from(
        [
            Raw("1979-05-27T07:32:00Z"),
            Raw("1979-05-27"),
            Raw("07:32:00"),
            Raw("1979-05-27T00:32:00.999999-07:00"),
            Raw("9" * 5000),
            Raw("1" + "0" * 400),
            Raw("[" * 1500 + "]" * 1500),
            Raw("{a = " * 800 + "1" + "}" * 800),
        ]
    ),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(JUNK_KEYS, inner, max_size=3)
    ),
    max_leaves=6,
)

LAYER_TYPES = [
    "dense",
    "dropout",
    "relu",
    "tanh",
    "sigmoid",
    "dropconnect_dense",
    "softmax_cross_entropy",
    "mse",
    "dens",
    "Dense",
    "",
    " dense",
    "os:system",
    "builtins:eval",
    "builtins:exec",
    "builtins:__import__",
    "builtins:type",
    "builtins:object",
    "x.y:Z",
    "__import__('os')",
    "__import__('os').system('true')",
    "os.path:join",
    "os:_exit",
    "sys:exit",
    "subprocess:Popen",
    "pathlib:Path",
    "horn.layers.dense:Dense",
    "horn.layers:Dropout",
    "horn.layer:Layer",
    "horn.layer:Loss",
    "horn.errors:HornError",
    "horn.nope:X",
    "horn.layers.dense:Nope",
    "zz_fuzz.mod:Cls",
    "a..b:C",
    "os.:x",
    "os:system\n",
    ":",
    "a:",
    ":b",
    "a:b:c",
    "é:É",
]
LAYER_OPTIONS = {
    "units": st.one_of(
        st.integers(-2, 40),
        st.sampled_from(SPECIAL_INTS + SPECIAL_FLOATS),
        st.sampled_from(["8", True, 2.0, 1.5, [8]]),
    ),
    "activation": st.sampled_from(
        ["identity", "relu", "tanh", "sigmoid", "softmax", "", 1, "None"]
    ),
    "p": st.one_of(st.sampled_from(SPECIAL_FLOATS + [0.99, 1, -1, "0.5", True]), st.floats()),
    "init": st.sampled_from(["he", "xavier", "normal", "zeros", "ones", "bogus", 3, [1], {}]),
    "bias": st.one_of(st.booleans(), SCALARS),
    "temperature": st.one_of(st.sampled_from(SPECIAL_FLOATS + [-1, "1"]), st.floats()),
}
LAYER_TABLE = st.builds(
    lambda kind, options, junk: {"type": kind, **options, **junk},
    st.one_of(st.sampled_from(LAYER_TYPES), SCALARS),
    st.fixed_dictionaries({}, optional=LAYER_OPTIONS),
    st.dictionaries(JUNK_KEYS, JUNK, max_size=1),
) | st.fixed_dictionaries({}, optional={"units": st.integers(1, 9), "type": SCALARS})
LAYER_LIST = st.lists(st.one_of(LAYER_TABLE, LAYER_TABLE, LAYER_TABLE, JUNK), max_size=4)


def key_values(meta):
    """Values for one job key: mostly the right type near its bounds, sometimes junk."""
    kind, choices = meta["kind"], meta["choices"]
    options = [JUNK]
    if choices:
        options.append(st.sampled_from(choices))
    if kind is int:
        edges = [b + d for b in (meta["lo"], meta["hi"]) if b is not None for d in (-1, 0, 1)]
        options += [st.integers(-3, 70), st.sampled_from(edges + SPECIAL_INTS)]
    elif kind is float:
        edges = [b for b in (meta["lo"], meta["hi"]) if b is not None]
        options += [st.floats(-2, 2), st.sampled_from(edges + SPECIAL_FLOATS), st.integers(-2, 5)]
    elif kind is bool:
        options.append(st.booleans())
    elif kind is str:
        options.append(st.text(TEXT, max_size=8))
    elif kind is list:
        options.append(st.lists(st.one_of(st.floats(0, 2), SCALARS), max_size=4))
    elif kind is dict:  # train.early_stop: its own keys near their bounds, or junk keys
        options.append(
            st.dictionaries(
                st.sampled_from(["patience", "min_delta", "patiense"]),
                st.one_of(st.integers(-1, 3), st.floats(-1, 2), JUNK),
                max_size=3,
            )
        )
    return st.one_of(*options)


def section_strategy(name, cls):
    fields = {f.name: key_values(f.metadata) for f in key_fields(cls)}
    if name == "model":
        fields["layers"] = st.one_of(LAYER_LIST, LAYER_LIST, LAYER_LIST, JUNK)
        fields["loss"] = st.one_of(st.sampled_from(LAYER_TYPES), LAYER_TABLE, JUNK)
    table = st.builds(
        lambda known, junk: {**known, **junk},
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(JUNK_KEYS, JUNK, max_size=1),
    )
    return table if name == "model" else st.one_of(table, table, table, JUNK)


def valid_values(meta):
    """Values a job key accepts (bounds respected), so near-miss documents load."""
    kind, lo, hi = meta["kind"], meta["lo"], meta["hi"]
    if meta["choices"]:
        return st.sampled_from(meta["choices"])
    if kind is int:
        low = 0 if lo is None else lo + meta["lo_open"]
        return st.integers(low, low + 50 if hi is None else min(hi - meta["hi_open"], low + 50))
    if kind is float:
        return st.floats(
            0.0 if lo is None else lo,
            10.0 if hi is None else hi,
            exclude_min=meta["lo_open"],
            exclude_max=meta["hi_open"],
        )
    if kind is bool:
        return st.booleans()
    if kind is list:
        return st.lists(st.floats(0.5, 2.0), max_size=3)
    if kind is dict:
        return st.fixed_dictionaries(
            {}, optional={"patience": st.integers(1, 9), "min_delta": st.floats(0.0, 1.0)}
        )
    return st.text(TEXT, min_size=1, max_size=8)


VALID_LAYERS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["dense", "dropconnect_dense"]), "units": st.integers(1, 16)},
            optional={
                "activation": st.sampled_from(["identity", "relu", "tanh"]),
                "init": st.sampled_from(["he", "xavier", "zeros"]),
                "bias": st.booleans(),
            },
        ),
        st.fixed_dictionaries({"type": st.just("dropout")}, optional={"p": st.floats(0, 0.9)}),
        st.fixed_dictionaries({"type": st.sampled_from(["relu", "tanh", "sigmoid"])}),
    ),
    min_size=1,
    max_size=4,
)
GROUP_STRATEGIES = sorted(n for n, s in strategies().items() if s.scope == "group")
VALID_SECTIONS = {
    name: st.fixed_dictionaries(
        {},
        optional={
            f.name: st.sampled_from(GROUP_STRATEGIES)
            if f.name == "barrier"
            else valid_values(f.metadata)
            for f in key_fields(cls)
            if f.name not in ("layers", "loss")
        },
    )
    for name, cls in SECTIONS.items()
}


SECTION_SETS = st.sets(st.sampled_from(sorted(SECTIONS)))
VALID_LOSSES = st.sampled_from(
    ["softmax_cross_entropy", "mse", {"type": "softmax_cross_entropy", "temperature": 2.0}]
)
JOB_FAULTS = st.sampled_from(["none", "none", "value", "key", "layer", "option", "section"])
FIELD_NAMES = {
    name: st.sampled_from([f.name for f in key_fields(cls)]) for name, cls in SECTIONS.items()
}
LAYER_FAULTS = st.one_of(LAYER_TABLE, JUNK)
EXTRA_OPTIONS = st.fixed_dictionaries({}, optional=LAYER_OPTIONS)
SECTION_NAMES = st.one_of(st.sampled_from(sorted(SECTIONS)), JUNK_KEYS)


def pick(draw, items):
    items = sorted(items)
    return items[draw(st.integers(0, len(items) - 1))]


@st.composite
def near_miss_jobs(draw):
    """A valid job (most keys in range) with at most one fault injected somewhere."""
    doc = {name: draw(VALID_SECTIONS[name]) for name in draw(SECTION_SETS)}
    doc["model"] = {
        **draw(VALID_SECTIONS["model"]),
        "layers": draw(VALID_LAYERS),
        "loss": draw(VALID_LOSSES),
    }
    fault = draw(JOB_FAULTS)
    if fault == "value":
        section = pick(draw, doc)
        doc[section][draw(FIELD_NAMES[section])] = draw(JUNK)
    elif fault == "key":
        doc[pick(draw, doc)][draw(JUNK_KEYS)] = draw(JUNK)
    elif fault in ("layer", "option"):
        layers = doc["model"]["layers"]
        at = pick(draw, range(len(layers)))
        layers[at] = (
            draw(LAYER_FAULTS) if fault == "layer" else {**layers[at], **draw(EXTRA_OPTIONS)}
        )
    elif fault == "section":
        doc[draw(SECTION_NAMES)] = draw(JUNK)
    return doc


JOB_DOCS = st.one_of(
    near_miss_jobs(),
    st.builds(
        lambda model, others, junk: {**others, "model": model, **junk},
        section_strategy("model", SECTIONS["model"]),
        st.fixed_dictionaries(
            {},
            optional={
                **{
                    name: section_strategy(name, cls)
                    for name, cls in SECTIONS.items()
                    if name != "model"
                },
                "name": st.one_of(
                    st.sampled_from(["t", "a-b.c_d", "x" * 65, "", "a b", "é"]), JUNK
                ),
                "description": JUNK,
            },
        ),
        st.dictionaries(
            st.one_of(JUNK_KEYS, st.sampled_from(["trian", "models", "train.x"])), JUNK, max_size=1
        ),
    ),
)


def check_job(job, work):
    """A job that loads must resolve to JSON and load back identically (what a run does)."""
    resolved = work / "resolved.json"
    write_resolved(job, resolved)
    again, doc = load_job(resolved).to_dict(), job.to_dict()
    for section, table in doc.items():
        for key, value in table.items() if isinstance(table, dict) else ():
            if again[section][key] != value and isinstance(value, str):  # a file path:
                assert again[section][key] == str(Path(job.base_dir) / value)  # made absolute
                again[section][key] = value
    assert again == doc
    assert job.model.layers and all(isinstance(s, dict) for s in job.model.layers)


@FUZZ
@given(doc=JOB_DOCS, array_tables=st.booleans())
def test_fuzz_structured_job_files(work, doc, array_tables):
    path = work / "job.toml"
    path.write_text(toml_document(doc, array_tables), encoding="utf-8")
    job = only_horn_errors(lambda: load_job(path), str(path))
    if job is not None:
        check_job(job, work)


TOML_TOKENS = st.sampled_from(
    [
        "\n",
        " ",
        "=",
        " = ",
        "[",
        "]",
        "[[",
        "]]",
        "{",
        "}",
        ",",
        ".",
        '"',
        "'",
        '"""',
        "'''",
        "#",
        "\\",
        "\\u00",
        "name",
        "model",
        "layers",
        "type",
        "dense",
        "units",
        "train",
        "lr",
        "epochs",
        "data",
        "parallel",
        "loss",
        "0",
        "1",
        "-1",
        "1.5",
        "1e999",
        "nan",
        "inf",
        "+inf",
        "-nan",
        "true",
        "0x1F",
        "0o7",
        "0b2",
        "1_000",
        "01",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        '"os:system"',
        '"builtins:eval"',
        Big("9" * 5000),
        Big("[" * 1200),
        Big("{a=" * 600),
        Big("a." * 300 + "b = 1\n"),
    ]
    + NASTY_CHARS
)
TOML_TEXT = st.one_of(
    st.text(TEXT, max_size=200),
    st.lists(TOML_TOKENS, max_size=60).map("".join),
    st.builds(
        lambda at, cut, tokens: GOOD_JOB[:at] + "".join(tokens) + GOOD_JOB[at + cut :],
        st.integers(0, len(GOOD_JOB)),
        st.integers(0, 4),
        st.lists(TOML_TOKENS, max_size=3),
    ),
)


@FUZZ
@given(
    data=st.one_of(
        TOML_TEXT.map(lambda s: s.encode("utf-8")),
        st.binary(max_size=200),
        st.text(max_size=50).map(lambda s: s.encode("utf-8", "surrogatepass")),
    ),
    suffix=st.sampled_from([".toml", ".toml", ".json"]),
)
def test_fuzz_random_job_text(work, data, suffix):
    path = work / f"random{suffix}"
    path.write_bytes(data)
    job = only_horn_errors(lambda: load_job(path), str(path))
    if job is not None:
        check_job(job, work)


OVERRIDE_KEYS = st.one_of(
    st.sampled_from(
        [
            "train.lr",
            "train.epochs",
            "train.batch_size",
            "train.nesterov",
            "train.optimizer",
            "train.seed",
            "data.name",
            "data.path",
            "data.limit",
            "data.val_fraction",
            "parallel.workers",
            "parallel.subnet.weights",
            "log.dir",
            "name",
            "description",
            "model.loss",
            "model.loss.temperature",
            "model.layers",
            "model.layers.0",
            "model.layers.0.units",
            "model.layers.1.type",
            "model.layers.0.type",
            "model.layers.0.activation",
            "model.layers.0.bogus",
            "model.layers.9.units",
            "model.layers.\u00b2.units",
            "model.layers.\u0663.units",
            "model.layers.-1",
            "model.layers.01.units",
            "model.layers.0.x.y",
            "train.lr.x",
            "train",
            "",
            ".",
            "a..b",
            "train.",
            ".train",
            " train . lr ",
            Big("x" * 300),
        ]
    ),
    st.lists(
        st.one_of(
            st.sampled_from(["model", "layers", "0", "1", "train", "lr", "type"]),
            st.text(TEXT, max_size=5),
        ),
        min_size=1,
        max_size=4,
    ).map(".".join),
)
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(
        [
            "1",
            "0",
            "-1",
            "0.5",
            "1e999",
            "nan",
            "inf",
            "-inf",
            "true",
            '"dense"',
            "dense",
            "[1, 2]",
            "[]",
            "{}",
            "{type = 'dense', units = 4}",
            "{type = 'os:system'}",
            '"os:system"',
            "os:system",
            "'builtins:eval'",
            "__import__('os').system('true')",
            "[{type='dense', units=3}]",
            Big("9" * 5000),
            Big("[" * 3000),
            Big("{a=" * 1000),
            "1979-05-27",
            "",
            "=",
            "1\nname = 'x'",
            "1 # c",
            "'''a\nb'''",
            "10000000000000",
            "1e-310",
        ]
        + NASTY_CHARS
    ),
    st.text(TEXT, max_size=20),
    SCALARS.map(toml_value),
)
OVERRIDES = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", OVERRIDE_KEYS, OVERRIDE_VALUES), st.text(TEXT, max_size=20)
)


@pytest.fixture(scope="module")
def good_job(work):
    path = work / "good.toml"
    path.write_text(GOOD_JOB)
    load_job(path)
    return path


@FUZZ
@given(items=st.lists(OVERRIDES, min_size=1, max_size=4))
def test_fuzz_set_overrides(work, good_job, items):
    job = only_horn_errors(lambda: load_job(good_job, items), str(good_job), "--set")
    if job is not None:
        check_job(job, work)


# ================================================ typed layer options, --set, validate (issue 11)
OPTION_VALUES = st.one_of(
    JUNK,
    st.sampled_from(
        [True, False, 0, 1, 3, -1, 2.5, 1e9, "relu", "he", "no", "", [3, 3], [2], [1, "2"], None]
    ),
)


@st.composite
def layer_options(draw):
    """A registered layer type and values, of any type, for its own options."""
    kind = draw(st.sampled_from(sorted(registry.registered())))
    names = sorted(option_types(registry.registered()[kind]))
    options = (
        draw(st.dictionaries(st.sampled_from(names), OPTION_VALUES, max_size=3)) if names else {}
    )
    return kind, options


@FUZZ
@given(case=layer_options())
def test_fuzz_layer_option_types(case):
    """Whatever a layer accepts holds its annotated types; a type error names the layer,
    the option, the expected type and the value, and only a wrong type gets one."""
    kind, options = case
    declared = option_types(registry.registered()[kind])
    where = "job.toml: model.layers[1]"
    try:
        cls = registry.registered()[kind]
        layer = layer_from_spec({"type": kind, **options}, where, loss=issubclass(cls, Loss))
    except HornError as exc:
        message = str(exc)
        assert message.startswith(where) and kind in message and "\n" not in message, message
        typed = re.match(
            rf"{re.escape(where)} \({kind}\): option '(\w+)': expected (.+), "
            rf"found (.+)$",
            message,
        )
        if typed:
            name, value = typed.group(1), options[typed.group(1)]
            beyond_float32 = declared[name][0] is float and "within float32 range" in message
            beyond_int64 = "within int64 range" in message
            assert beyond_float32 or beyond_int64 or not matches(value, declared[name][0]), message
            assert typed.group(3) == repr(value), message
            assert not beyond_float32 or abs(value) > FLOAT32_MAX, message
            assert not beyond_int64 or max(map(abs, integers_in(value))) > INT64_MAX, message
        else:  # the layer's own word on a value of the right type; a missing option; NaN
            assert re.search("missing a required argument|expected finite numbers", message) or all(
                matches(v, declared[k][0]) for k, v in options.items()
            ), message
        return
    for name, (kind_of, _) in declared.items():
        assert matches(layer.config[name], kind_of), (name, layer.config[name])


@FUZZ
@given(items=st.lists(OVERRIDES, min_size=1, max_size=4))
def test_fuzz_set_errors_name_the_set(work, good_job, items):
    """The job file is valid, so every error is an override's: it names ``--set``."""
    try:
        load_job(good_job, items)
    except HornError as exc:
        assert str(exc).startswith("--set "), str(exc)


@settings(FUZZ, max_examples=300)
@given(doc=near_miss_jobs())
def test_fuzz_validate_and_run_agree(work, doc):
    """``horn validate`` and ``horn run`` make the same checks before training (only
    the single-process rule differs), never a traceback; what validates takes a step."""
    if isinstance(doc.setdefault("train", {}), dict):
        doc["train"]["threads"] = 1  # fuzzed thread counts would outlive the test
    path = work / "validate.toml"
    path.write_text(toml_document(doc, False), encoding="utf-8")
    job = only_horn_errors(lambda: load_job(path), str(path))
    if job is None:
        return
    validated = only_horn_errors(lambda: prepare(job, single_process_rule=False))
    ran = only_horn_errors(lambda: prepare(job))
    if needed_ranks(job.parallel) > 1:
        assert ran is None
    else:
        assert (validated is None) == (ran is None)
    if ran is not None:
        xb, yb = ran.stream.next()
        ran.model.train_step(xb, yb)
        ran.optimizer.step(ran.schedule(0))


# =========================================================================== hostfiles
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
LABEL = st.builds(
    lambda a, mid, b: a + mid + b if b else a,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "-", max_size=6),
    st.sampled_from(["", *ALNUM]),
)
NAME = (
    st.lists(LABEL, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda n: not all(label.isdigit() for label in n.split(".")))
)
IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
HOST = st.one_of(NAME, IPV4)
BLANKS = st.sampled_from([" ", "  ", "\t", " \t "])
EOL = st.sampled_from(["\n", "\r\n", "  \n", " # comment\n", "# x = y\n", "\t#\n"])


SLOTS = st.one_of(st.none(), st.integers(1, 1_000_000))
EQUALS = st.sampled_from(["=", " = ", "= ", " ="])
INDENT = st.sampled_from(["", " ", "\t"])
PREAMBLE = st.sampled_from(["", "# cluster\n", "\n\n"])
BOOL = st.booleans()


@st.composite
def valid_hostfiles(draw):
    """A valid hostfile in either syntax with random spacing/comments, and its parse."""
    names = draw(st.lists(HOST, min_size=1, max_size=4, unique_by=str.lower))
    text, expected = draw(PREAMBLE), []
    for name in names:
        slots = draw(SLOTS)
        if slots is not None and draw(BOOL):
            line = f"{name}:{slots}"
        else:
            line = name
            options = []
            if slots is not None:
                options.append(("slots", slots))
            if draw(BOOL):
                options.append(("max_slots", max(slots or 1, draw(SLOTS) or 1)))
            if len(options) == 2 and draw(BOOL):
                options.reverse()
            for key, value in options:
                line += f"{draw(BLANKS)}{key}{draw(EQUALS)}{value}"
        text += draw(INDENT) + line + draw(EOL)
        expected.append((name, slots or 1))
    return text, expected


@FUZZ
@given(case=valid_hostfiles())
def test_fuzz_valid_hostfiles_parse_exactly(work, case):
    text, expected = case
    path = work / "valid.hosts"
    path.write_bytes(text.encode())
    assert check_hostfile(path) == (expected, sum(slots for _, slots in expected))


HOST_WORDS = st.one_of(
    st.sampled_from(["node1", "n-2.example.org", "10.0.0.7", "A1"]),
    st.sampled_from(
        [
            "node1",
            "NODE1",
            "node_2",
            "-node",
            "node-",
            "a..b",
            ".a",
            "a.",
            Big("x" * 64),
            Big("x" * 63),
            Big(("a" * 63 + ".") * 4 + "a"),
            "10.0.0.256",
            "1.2.3",
            "01.2.3.4",
            "1.2.3.4.5",
            "\u0663.1.1.1",
            "\u00b2",
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "node\x00",
            "n\u00e9",
            "*",
            "%s",
            "{}",
        ]
    ),
)
SLOT_VALUES = st.one_of(
    st.integers(-2, 12).map(str),
    st.sampled_from(
        [
            "1000000",
            "1000001",
            "99999999",
            "0",
            "00",
            "007",
            "-0",
            "+3",
            "2.5",
            "1e3",
            "",
            "x",
            "\u0663",
            "\uff11",
            "0x10",
            "4 4",
            Big("9" * 30),
        ]
    ),
)
HOST_KEYS = st.sampled_from(["slots", "max_slots", "slot", "maxslots", "SLOTS", "", "cpu", "="])


JUNK_EQUALS = st.sampled_from(["=", " = ", "", "=="])
OPTION_COUNT = st.integers(0, 3)
JUNK_EOL = st.one_of(EOL, st.sampled_from(["\r", "", "\x85"]))


@st.composite
def junk_host_lines(draw):
    head = draw(HOST_WORDS)
    if draw(BOOL):
        head += ":" + draw(SLOT_VALUES)
    words = [head] + [
        draw(HOST_KEYS) + draw(JUNK_EQUALS) + draw(SLOT_VALUES) for _ in range(draw(OPTION_COUNT))
    ]
    return draw(BLANKS).join(words) + draw(JUNK_EOL)


@FUZZ
@given(lines=st.lists(junk_host_lines(), max_size=5))
def test_fuzz_structured_hostfiles(work, lines):
    path = work / "junk.hosts"
    path.write_bytes("".join(lines).encode())
    parsed = only_horn_errors(lambda: check_hostfile(path), f"{path}:", f"{path}: no hosts")
    if parsed is not None:
        hosts, total = parsed
        assert hosts and total == sum(s for _, s in hosts)
        assert all(1 <= s <= 1_000_000 and h and not any(c.isspace() for c in h) for h, s in hosts)
        assert len({h.lower() for h, _ in hosts}) == len(hosts)


# =========================================================================== npz containers
def npy(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header, payload=b"", version=(1, 0)):
    """A .npy member with a forged header text (and header length field)."""
    text = header.encode("latin1", "replace") if isinstance(header, str) else header
    size = (
        struct.pack("<H" if version[0] == 1 else "<I", len(text) % (1 << 16))
        if version[0] in (1, 2, 3)
        else b"\xff\xff"
    )
    return b"\x93NUMPY" + bytes(version) + size + text + payload


def zip_bytes(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are part of the fuzz
        with zipfile.ZipFile(buf, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buf.getvalue()


DESCRS = [
    "<f4",
    "<f8",
    ">f8",
    "<f2",
    "|b1",
    "<i8",
    ">i4",
    "<u8",
    "|u1",
    "<c16",
    "<U3",
    "|S2",
    "|O",
    "<M8[D]",
    "<m8[s]",
    "|V4",
    "|V0",
    "|S0",
    [("a", "<i4"), ("b", "<f4")],
    [("o", "|O")],
    "<f4 ",
    "f",
    "garbage",
    3,
    None,
    ("<f4", (2,)),
    "<f16",
]
SHAPES = st.one_of(
    st.lists(st.integers(0, 6), max_size=3).map(tuple),
    st.lists(
        st.sampled_from([0, 1, 2, -1, 2**31, 2**32, 2**40, 2**62, 2**63, 2**70]), max_size=3
    ).map(tuple),
    st.sampled_from([(), (1,) * 40, [3], (3.0,), (True,), "(3,)", None]),
)
HEADERS = st.one_of(
    st.builds(
        lambda d, f, s: f"{{'descr': {d!r}, 'fortran_order': {f!r}, 'shape': {s!r}, }}",
        st.sampled_from(DESCRS),
        st.sampled_from([False, True, 0, "no"]),
        SHAPES,
    ),
    st.sampled_from(
        [
            "",
            "{}",
            "[]",
            "{[]: 1}",
            Big("(" * 300 + ")" * 300),
            "{'descr': '<f4'}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "__import__('os').system('true')",
            Big("x" * 20000),
            "{'descr': '<f4',",
        ]
    ),
    st.text(TEXT, max_size=40),
)
FORGED_NPY = st.builds(
    npy_raw,
    HEADERS,
    st.binary(max_size=64),
    st.sampled_from([(1, 0), (2, 0), (3, 0), (1, 0), (9, 9), (0, 0)]),
)

DTYPES = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(),
)
SPECIAL_VALUES = [
    np.nan,
    np.inf,
    -np.inf,
    3.4e38,
    -3.4e38,
    1e300,
    5e-324,
    -0.0,
    0.5,
    -1,
    255,
    2**31,
    2**53 + 1,
    2**63,
    2**64 - 1,
]


def array_of(dtype, shape, seed, special=None, scale=100.0):
    """Random values of any dtype (plus one special value) from a seed: cheap to generate."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, scale, shape)
    if special is not None and values.size:
        values.flat[rng.integers(values.size)] = special
    dtype = np.dtype(dtype)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype.kind in "Mm":
            return rng.integers(-1000, 1000, shape).astype(dtype)
        if dtype.kind in "iub":
            values = np.nan_to_num(values, posinf=2**64, neginf=-(2**64)).round()
        return values.astype(dtype)


def arrays(
    dtypes, shapes, specials=st.one_of(st.none(), st.sampled_from(SPECIAL_VALUES)), scale=100.0
):
    return st.builds(
        lambda d, sh, seed, sp: array_of(d, sh, seed, sp, scale),
        dtypes,
        shapes,
        st.integers(0, 2**32 - 1),
        specials,
    )


ANY_ARRAY = arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
OBJECT_ARRAY = st.sampled_from(
    [
        np.array([1, "a", None], dtype=object),
        np.array([{"a": 1}], dtype=object),
        np.empty((0,), dtype=object),
    ]
)
COMMON_DTYPES = st.sampled_from(["f4", "f8", "f2", "u1", "i8", "u8", "?"])


SAMPLES, TAIL = st.integers(0, 10), st.lists(st.integers(0, 4), max_size=2).map(tuple)
XY_DTYPES = st.one_of(COMMON_DTYPES, DTYPES)
SEEDS = st.integers(0, 2**32 - 1)
MAYBE_SPECIAL = st.one_of(st.none(), st.none(), st.sampled_from(SPECIAL_VALUES))
LABEL_COUNT_SHIFT = st.sampled_from([0, 0, 0, 0, 1, -1])
LABEL_SCALE = st.sampled_from([0.0, 1.0, 2.0, 100.0])


@st.composite
def xy_arrays(draw):
    """Features and labels that are mostly well-formed, each with some way to go wrong."""
    n = draw(SAMPLES)
    x = array_of(draw(XY_DTYPES), (n,) + draw(TAIL), draw(SEEDS), draw(MAYBE_SPECIAL))
    m = max(0, n + draw(LABEL_COUNT_SHIFT))
    y_shape = ((m,), (m,), (m, 1), (m, 2), ())[draw(st.integers(0, 4))]
    y = array_of(draw(XY_DTYPES), y_shape, draw(SEEDS), draw(MAYBE_SPECIAL), draw(LABEL_SCALE))
    if y.dtype.kind in "iuf" and draw(BOOL):
        y = np.abs(y)  # mostly non-negative labels
    return x, y


MEMBER_NAMES = st.text(TEXT, min_size=1, max_size=8).map(
    lambda name: name.replace("\x00", "_")
)  # zipfile cuts names at NUL
MEMBER_DATA = st.one_of(
    ANY_ARRAY.map(npy), FORGED_NPY, OBJECT_ARRAY.map(npy), st.binary(max_size=32)
)
XY = xy_arrays()


def npz_files(names):
    """An .npz-like zip: real arrays, forged headers, pickles, raw members, odd names."""
    extras = st.lists(
        st.tuples(st.one_of(st.sampled_from(names), MEMBER_NAMES), MEMBER_DATA), max_size=3
    )
    return _npz_files(extras)


@st.composite
def _npz_files(draw, extras):
    members = []
    if draw(BOOL):
        x, y = draw(XY)
        members += [("x.npy", npy(x)), ("y.npy", npy(y))]
        if draw(BOOL):
            xt, yt = draw(XY)
            members += [("x_test.npy", npy(xt))] + ([("y_test.npy", npy(yt))] if draw(BOOL) else [])
    members += draw(extras)
    if draw(BOOL):
        members.reverse()
    data = zip_bytes(members, draw(COMPRESSIONS))
    action = draw(DAMAGE)
    if action != "none" and data:
        at = draw(POSITIONS) % len(data)
        data = data[:at] + (bytes([draw(BYTE)]) + data[at + 1 :] if action == "flip" else b"")
    return data


COMPRESSIONS = st.sampled_from(
    [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
DAMAGE = st.sampled_from(["none", "none", "none", "flip", "cut"])
POSITIONS, BYTE = st.integers(0, 2**16), st.integers(0, 255)


DATA_NAMES = [
    "x.npy",
    "y.npy",
    "x_test.npy",
    "y_test.npy",
    "x",
    "y",
    "x.NPY",
    "dir/",
    "../x.npy",
    "/abs.npy",
    "x.npy.npy",
    ".npy",
]


def check_features(x):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
    assert x.flags.c_contiguous and x.shape[0] >= 1 and x.shape[1] >= 1 and np.isfinite(x).all()


def check_dataset(data):
    width = data.x_train.shape[1]
    for x, y in (
        (data.x_train, data.y_train),
        (data.x_val, data.y_val),
        (data.x_test, data.y_test),
    ):
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == width
        assert x.flags.c_contiguous
        assert np.isfinite(x).all(), "scaled features must stay finite"
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert ((y >= 0) & (y < data.classes)).all()
    assert len(data.x_train) >= 1 and len(data.x_test) >= 1 and data.classes >= 1


DATA_OPTIONS = st.fixed_dictionaries(
    {
        "scale": st.sampled_from(["unit", "standard", "none"]),
        "val_fraction": st.sampled_from([0.0, 0.1, 0.5, 0.9]),
        "test_fraction": st.sampled_from([0.2, 0.5]),
        "limit": st.sampled_from([None, None, 1, 5]),
    }
)


@FUZZ
@given(
    data=st.one_of(
        npz_files(DATA_NAMES),
        npz_files(DATA_NAMES),
        st.binary(max_size=200),
        st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b),
        FORGED_NPY,
        ANY_ARRAY.map(npy),
    ),
    options=DATA_OPTIONS,
)
def test_fuzz_npz_data(work, data, options):
    path = work / "data.npz"
    path.write_bytes(data)
    loaded = only_horn_errors(
        lambda: load_dataset({"name": "npz", "path": str(path), **options}), str(path), "data."
    )
    if loaded is not None:
        check_dataset(loaded)
    x = only_horn_errors(lambda: load_features(path), str(path))
    if x is not None:
        check_features(x)


@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")  # numpy
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=200),
        FORGED_NPY,
        ANY_ARRAY.map(npy),
        OBJECT_ARRAY.map(npy),
        st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b),
    )
)
def test_fuzz_npy_features(work, data):
    path = work / "inputs.npy"
    path.write_bytes(data)
    x = only_horn_errors(lambda: load_features(path), str(path))
    if x is not None:
        check_features(x)


# =========================================================================== CSV
CSV_CELLS = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "-0",
            "1.5",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e999",
            "1e-999",
            "1_000",
            " 3 ",
            "0x10",
            "",
            " ",
            "abc",
            "label",
            "x1",
            '"1"',
            '"1,2"',
            '"',
            '""',
            "'1'",
            "1;2",
            "\t4",
            "١",
            "\uff11",
            "\u00b2",
            Big("9" * 400),
            "-" * 3,
            "+1",
            ".5",
            "5.",
            "e5",
            "\x00",
            "\ufeff1",
        ]
    ),
    st.text(TEXT, max_size=4),
)


CSV_WIDTH, CSV_ROWS = st.integers(1, 5), st.integers(0, 8)
CSV_RAGGED = st.sampled_from([0] * 6 + [1, -1])
CSV_HEADER = st.sampled_from(["f", "x", "label", "1", ""])
CSV_NUMBER = st.integers(-3, 9).map(str)
CSV_SEP = st.sampled_from([",", ",", ",", ", ", ";", "\t"])
CSV_EOL = st.sampled_from(["\n", "\r\n", "\r", "\n\n"])


@st.composite
def csv_texts(draw):
    width = draw(CSV_WIDTH)
    rows = []
    if draw(BOOL):
        rows.append([draw(CSV_HEADER) + str(i) for i in range(width)])
    for _ in range(draw(CSV_ROWS)):
        cells = CSV_NUMBER if draw(BOOL) else CSV_CELLS
        rows.append([draw(cells) for _ in range(max(width + draw(CSV_RAGGED), 0))])
    sep, eol = draw(CSV_SEP), draw(CSV_EOL)
    return eol.join(sep.join(row) for row in rows) + (eol if draw(BOOL) else "")


@FUZZ
@given(
    text=st.one_of(csv_texts(), csv_texts(), csv_texts(), st.text(max_size=120)),
    label_column=st.one_of(st.just(-1), st.integers(-6, 6)),
    options=DATA_OPTIONS,
)
def test_fuzz_csv_data(work, text, label_column, options):
    path = work / "data.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    loaded = only_horn_errors(
        lambda: load_dataset(
            {"name": "csv", "path": str(path), "label_column": label_column, **options}
        ),
        str(path),
        "data.",
    )
    if loaded is not None:
        check_dataset(loaded)
    x = only_horn_errors(lambda: load_features(path), str(path))
    if x is not None:
        check_features(x)


# =========================================================================== model files
def small_model():
    return Model([Dense(4, "relu"), Dense(3)], SoftmaxCrossEntropy(), 5, "numpy", seed=1)


BASE = small_model()
BASE_ARRAYS = BASE.state_arrays()
BASE_HEADER = {"format": FORMAT, "spec": BASE.spec(), "meta": {"classes": 3}}

JSON_JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(TEXT, max_size=8),
        st.sampled_from(SPECIAL_INTS),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(TEXT, max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
SPEC_LAYER = st.builds(
    lambda kind, options: {"type": kind, **options},
    st.sampled_from(LAYER_TYPES),
    st.fixed_dictionaries(
        {},
        optional={
            **LAYER_OPTIONS,
            "units": st.one_of(
                st.sampled_from(
                    [4, 3, 1, 0, -4, 10**12, 2**31, 2**40, 2**63, 1.5, 4.0, math.inf, "4"]
                ),
                st.integers(1, 8),
            ),
        },
    ),
)
SPECS = st.fixed_dictionaries(
    {},
    optional={
        "in_features": st.one_of(
            st.sampled_from(
                [
                    5,
                    5,
                    5,
                    1,
                    0,
                    -5,
                    1.5,
                    5.0,
                    "5",
                    None,
                    True,
                    [5],
                    10**12,
                    2**31,
                    2**63,
                    10**30,
                    math.nan,
                    math.inf,
                ]
            ),
            JSON_JUNK,
        ),
        "layers": st.one_of(
            st.lists(st.one_of(SPEC_LAYER, SPEC_LAYER, JSON_JUNK), max_size=3),
            st.just(BASE.spec()["layers"]),
            JSON_JUNK,
        ),
        "loss": st.one_of(
            st.sampled_from(
                [
                    {"type": "softmax_cross_entropy"},
                    {"type": "mse"},
                    {"type": "dense", "units": 2},
                    {"type": "os:system"},
                    {"type": "builtins:eval"},
                    "softmax_cross_entropy",
                    {},
                ]
            ),
            SPEC_LAYER,
            JSON_JUNK,
        ),
    },
)
HEADER_DOCS = st.one_of(
    st.builds(
        lambda fmt, spec, meta, drop: {
            k: v for k, v in {"format": fmt, "spec": spec, "meta": meta}.items() if k not in drop
        },
        st.sampled_from([FORMAT, FORMAT, FORMAT, "horn-model-2", "", None, 1]),
        st.one_of(SPECS, st.just(BASE.spec()), JSON_JUNK),
        st.one_of(st.just({"classes": 3}), JSON_JUNK),
        st.sets(st.sampled_from(["format", "spec", "meta"]), max_size=1),
    ),
    JSON_JUNK,
)
HEADER_TEXT = st.one_of(
    HEADER_DOCS.map(json.dumps),
    HEADER_DOCS.map(json.dumps),
    st.text(TEXT, max_size=40),
    st.sampled_from(
        [
            Big("[" * 100000),
            Big('{"a":' * 50000),
            Big("9" * 5000),
            '{"format": 1e999}',
            "",
            json.dumps(BASE_HEADER)[:-1],
            "\ufeff" + json.dumps(BASE_HEADER),
        ]
    ),
)


def header_array(text, encoding):
    raw = text.encode("utf-8", "surrogatepass")
    u8 = np.frombuffer(raw, dtype=np.uint8)
    return {
        "uint8": u8,
        "int64": u8.astype(np.int64),
        "float": u8.astype(np.float64) + 0.5,
        "2d": u8[: len(u8) // 2 * 2].reshape(-1, 2) if len(u8) > 1 else u8.reshape(1, -1),
        "string": np.array([text[:50]]),
        "0d": np.array(len(raw)),
        "negative": u8.astype(np.int16) - 300,
    }[encoding]


DAMAGES = st.sampled_from(["drop", "shape", "dtype", "nan", "junk"])
SHAPES_0_3 = hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)
POISON = st.sampled_from([np.nan, np.inf, 1e39])
FLOATS = st.sampled_from([np.float32, np.float64])
JUNK_ARRAYS = st.one_of(ANY_ARRAY, OBJECT_ARRAY)


def damaged(draw, array):
    """``array`` dropped (None), reshaped, retyped, poisoned with NaN/Inf, or replaced."""
    action = draw(DAMAGES)
    if action == "shape":
        return np.zeros(draw(SHAPES_0_3), np.float32)
    if action == "dtype":
        return np.zeros(array.shape, draw(DTYPES))
    if action == "nan":
        with np.errstate(over="ignore"):  # 1e39 is Inf as float32
            return np.full(array.shape, draw(POISON), draw(FLOATS))
    if action == "junk":
        return draw(JUNK_ARRAYS)
    return None


def rebuilt(spec):
    """Arrays and header for a model built from ``spec``, or None if it cannot be built
    (or would be big): then the file keeps the base model's arrays under this spec."""
    try:
        if spec_layout(spec)[1] > 10**5:
            return None
        model = Model.from_spec(spec, "numpy", seed=3)
    except Exception:  # noqa: BLE001 - any junk spec: the loader's problem, not the generator's
        return None
    return model.state_arrays()


MODEL_FAULTS = st.lists(
    st.sampled_from(["param", "header", "spec", "field", "encoding", "member", "extra"]), max_size=2
)
HEADER_FIELDS = st.sampled_from(["format", "spec", "meta"])
FIELD_VALUES = st.one_of(JSON_JUNK, st.sampled_from([FORMAT, "horn-model-2"]))
SPEC_FAULTS = st.one_of(SPECS, JSON_JUNK)
ENCODINGS = st.sampled_from(["int64", "float", "2d", "string", "0d", "negative"])
HEADER_MEMBERS = st.sampled_from(["raw", "forged", "none"])
EXTRA_NAMES = st.sampled_from(["extra", "param/0.W", "x", "param/9.W"])


@st.composite
def model_files(draw):
    """A real model file with up to two faults: in a parameter array, in the header's JSON,
    its encoding or member, in the spec (arrays rebuilt to match when it builds), or extras."""
    arrays, header, text = dict(BASE_ARRAYS), dict(BASE_HEADER), None
    encoding, member = "uint8", "npy"
    for fault in draw(MODEL_FAULTS):
        if fault == "param":
            key = pick(draw, arrays)
            arrays[key] = damaged(draw, np.zeros(1) if arrays[key] is None else arrays[key])
        elif fault == "header":
            text = draw(HEADER_TEXT)
        elif fault == "spec":
            header["spec"] = draw(SPEC_FAULTS)
            arrays = rebuilt(header["spec"]) or arrays
        elif fault == "field":
            header[draw(HEADER_FIELDS)] = draw(FIELD_VALUES)
        elif fault == "encoding":
            encoding = draw(ENCODINGS)
        elif fault == "member":
            member = draw(HEADER_MEMBERS)
        else:
            arrays[draw(EXTRA_NAMES)] = draw(JUNK_ARRAYS)
    members = [(f"{k}.npy", npy(v)) for k, v in arrays.items() if v is not None]
    text = json.dumps(header) if text is None else text
    if member == "npy":
        members.append(("__header__.npy", npy(header_array(text, encoding))))
    elif member == "raw":  # a member without the .npy magic (numpy would hand back bytes)
        members.append(("__header__", text.encode("utf-8", "surrogatepass")))
    elif member == "forged":
        members.append(("__header__.npy", draw(FORGED_NPY)))
    if draw(BOOL):
        members.reverse()
    return zip_bytes(members)


@FUZZ
@given(
    data=st.one_of(
        model_files(),
        model_files(),
        model_files(),
        st.binary(max_size=200),
        npz_files(["__header__.npy", "param/0.W.npy", "param/0.b.npy", "__header__"]),
        ANY_ARRAY.map(npy),
    )
)
def test_fuzz_model_files(work, data):
    path = work / "model.npz"
    path.write_bytes(data)
    loaded = only_horn_errors(lambda: Model.load(path), str(path))
    if loaded is not None:
        model, meta = loaded
        assert model.params.shape == (model.size,) and model.num_params <= 2**31
        x = np.ones((2, model.input_size), np.float32)
        assert model.predict(x).shape == batch_shape(2, model.out_features)


def test_model_round_trip_survives_the_fuzz_helpers(tmp_path):
    """The generators build on a real model file: make sure an untouched one loads."""
    path = tmp_path / "m.npz"
    members = [(f"{k}.npy", npy(v)) for k, v in BASE_ARRAYS.items()]
    members.append(("__header__.npy", npy(header_array(json.dumps(BASE_HEADER), "uint8"))))
    path.write_bytes(zip_bytes(members))
    model, meta = Model.load(path)
    assert meta == {"classes": 3} and np.array_equal(model.params, BASE.params)


@pytest.mark.parametrize("units", [10**12, 2**40, 2**31])
def test_model_file_with_absurd_size_is_refused_before_allocating(tmp_path, units):
    header = {
        "format": FORMAT,
        "meta": {},
        "spec": {
            "in_features": 5,
            "layers": [{"type": "dense", "units": units}],
            "loss": {"type": "softmax_cross_entropy"},
        },
    }
    path = tmp_path / "huge.npz"
    text = json.dumps(header)
    path.write_bytes(zip_bytes([("__header__.npy", npy(header_array(text, "uint8")))]))
    with pytest.raises(HornError, match=r"huge.npz.*(parameters|values each); refusing"):
        Model.load(path)


# =========================================================================== files naming modules
# A model file (or a job) may name any module in a layer type ("mod:Cls") or a model
# spec's classes table. Loading a file never imports one (issue 11): it either loads, with
# classes from modules imported already or horn.layers, or is one line naming the module.
MODULE_NAMES = st.one_of(
    st.sampled_from(
        [
            "fuzz_tripwire",
            "fuzz_tripwire.sub",
            "this",
            "antigravity",
            "os",
            "sys",
            "json",
            "numpy",
            "numpy.testing",
            "builtins",
            "importlib",
            "__main__",
            "horn",
            "horn.cli",
            "horn.layers",
            "horn.layers.dense",
            "horn.layers.nope",
            "horn.layers.conv",
            "tests.test_fuzz",
            "hypothesis",
        ]
    ),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,5}){0,2}", fullmatch=True),
    st.text(TEXT, max_size=12),
)
CLASS_NAMES = st.one_of(
    st.sampled_from(
        [
            "Dense",
            "Evil",
            "Layer",
            "Loss",
            "system",
            "PReLU",
            "SoftmaxCrossEntropy",
            "Dropout",
            "__class__",
            "testing",
            "Conv2d",
            "MSE",
        ]
    ),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    st.text(TEXT, max_size=6),
)
CLASS_PATHS = st.builds(
    lambda module, sep, cls: f"{module}{sep}{cls}",
    MODULE_NAMES,
    st.sampled_from([":", ":", ":", ".", "::", ": ", ":\n"]),
    CLASS_NAMES,
)
NAMED_TYPES = st.one_of(
    CLASS_PATHS,
    CLASS_PATHS,
    st.sampled_from(
        ["dense", "prelu", "relu", "softmax_cross_entropy", "mse", "dropout", "fuzz_evil"]
    ),
)
CLASS_TABLES = st.one_of(
    st.dictionaries(
        st.sampled_from(["dense", "prelu", "relu", "softmax_cross_entropy", "fuzz_evil", ""]),
        st.one_of(CLASS_PATHS, CLASS_PATHS, JSON_JUNK),
        max_size=3,
    ),
    JSON_JUNK,
)


@pytest.fixture(scope="module")
def tripwire(work):
    """``fuzz_tripwire`` on sys.path: importing it (by any route) leaves a file behind."""
    site, wire = work / "site", work / "TRIPWIRE"
    site.mkdir(exist_ok=True)
    (site / "fuzz_tripwire.py").write_text(
        f"import pathlib\npathlib.Path({str(wire)!r}).write_text('imported')\n"
    )
    sys.path.insert(0, str(site))
    importlib.import_module(
        "encodings.cp437"
    )  # zipfile's codec for member names: not the file's doing
    yield wire
    sys.path.remove(str(site))


@st.composite
def headers_naming_modules(draw):
    """BASE's header (as a model or a one-member ensemble) with layer types, the loss type
    and the spec's classes table naming generated modules."""
    header = json.loads(json.dumps(BASE_HEADER))
    spec = header["spec"]
    for layer in spec["layers"]:
        if draw(BOOL):
            layer["type"] = draw(NAMED_TYPES)
    if draw(BOOL):
        spec["loss"]["type"] = draw(NAMED_TYPES)
    if draw(BOOL):
        spec["classes"] = draw(CLASS_TABLES)
    if draw(BOOL):
        header = {"format": ENSEMBLE_FORMAT, "spec": spec, "weights": [1.0], "meta": {}}
    return header


class ImportLog:
    """Stands in for registry's importlib during one load: records every import asked for."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    def import_module(self, name, package=None):
        self.asked.append(name)
        return self.inner.import_module(name, package)


def builtin_module(name):
    return name == "horn.layers" or name.startswith("horn.layers.")


@FUZZ
@given(header=headers_naming_modules())
def test_fuzz_model_files_naming_modules_never_import_them(work, tripwire, header):
    path = work / "named.npz"
    prefix = "member0/" if header["format"] == ENSEMBLE_FORMAT else ""
    arrays = {f"{prefix}{k}": v for k, v in BASE_ARRAYS.items()}
    arrays["__header__"] = header_array(json.dumps(header), "uint8")
    np.savez(path, **arrays)
    before, log = set(sys.modules), ImportLog(registry.importlib)
    registry.importlib = log
    try:
        loaded = only_horn_errors(lambda: load_predictor(path), str(path))
    finally:
        registry.importlib = log.inner
    assert all(builtin_module(name) for name in log.asked), log.asked
    assert all(builtin_module(name) for name in set(sys.modules) - before), (
        set(sys.modules) - before
    )
    assert not tripwire.exists()
    if loaded is not None:
        model = loaded[0].members[0] if prefix else loaded[0]
        for layer in [*model.layers, model.loss]:
            module = type(layer).__module__
            assert builtin_module(module) or module in before, module
        assert loaded[0].predict(np.ones((2, 5), np.float32)).shape == (2, 3)


JOB_DIR_MODULES = {
    "fuzz_ok": 'import horn\n\n\n@horn.register_layer("fuzz_ok_relu")\nclass Ok(horn.Layer):\n'
    "    def forward(self, x, train):\n        return x\n\n"
    "    def backward(self, dy):\n        return dy\n",
    "fuzz_trap": "import pathlib\npathlib.Path(__file__).with_name('TRAPPED').write_text('x')\n",
}
IMPORT_ENTRIES = st.one_of(
    st.sampled_from(
        [
            "fuzz_ok",
            "fuzz_trap",
            "fuzz_ok.py",
            "./fuzz_trap.py",
            "fuzz_trap.sub",
            "fuzz_tripwire",
            "json",
            "this",
            "os",
            "fuzz_ok:Ok",
            "",
            "../x.py",
        ]
    ),
    MODULE_NAMES,
    JSON_JUNK,
)
JOB_LAYER_TYPES = st.one_of(
    NAMED_TYPES,
    st.sampled_from(["fuzz_ok_relu", "fuzz_ok:Ok", "fuzz_trap:X", "fuzz_tripwire:X", "relu"]),
)
GOOD_IMPORTS = st.lists(
    st.sampled_from(["fuzz_ok", "fuzz_ok.py", "fuzz_trap", "./fuzz_trap.py"]), max_size=2
)


@FUZZ
@given(
    imports=st.one_of(st.lists(IMPORT_ENTRIES, max_size=3), GOOD_IMPORTS, JSON_JUNK),
    kinds=st.lists(JOB_LAYER_TYPES, min_size=1, max_size=2),
)
def test_fuzz_jobs_import_exactly_the_modules_they_name(work, tripwire, imports, kinds):
    """The job's directory holds a layer module and a trap: a job imports what its
    model.imports names and nothing else, whatever its layer types say."""
    jobs = work / "jobdir"
    jobs.mkdir(exist_ok=True)
    for name, text in JOB_DIR_MODULES.items():
        (jobs / f"{name}.py").write_text(text)
    trapped = jobs / "TRAPPED"
    layers = [{"type": kind} for kind in kinds] + [{"type": "dense", "units": 3}]
    path = jobs / "job.json"
    path.write_text(json.dumps({"model": {"imports": imports, "layers": layers}}))
    before, saved = set(sys.modules), dict(registry._LAYERS)
    try:
        only_horn_errors(lambda: load_job(path), str(path))
        named = {
            Path(e).stem if e.endswith(".py") else e.split(".")[0]
            for e in (imports if isinstance(imports, list) else [])
            if isinstance(e, str)
        }
        new = {name.split(".")[0] for name in set(sys.modules) - before}
        assert new <= named | {"horn"}, (new, named)
        assert trapped.exists() <= ("fuzz_trap" in named)
        assert not tripwire.exists()
        for name in named & set(JOB_DIR_MODULES) & set(sys.modules):  # the job's dir first
            assert Path(sys.modules[name].__file__).parent == jobs
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in JOB_DIR_MODULES:  # horn's own (the guard lets them in) stay
                del sys.modules[name]
        registry._LAYERS.clear()
        registry._LAYERS.update(saved)
        trapped.unlink(missing_ok=True)


# =========================================================================== code execution
PWNED = []


def _pwn(tag):
    PWNED.append(tag)
    return tag


class Evil:
    """Unpickling this calls _pwn: proof that a loader ran code from a file."""

    def __reduce__(self):
        return (_pwn, ("unpickled",))


@pytest.fixture
def tripwires(monkeypatch):
    """Fail loudly if anything reaches os.system, eval, exec or the pickle payload."""
    calls = []

    def trap(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called with {args!r}")

        return call

    for module, name in ((os, "system"), (os, "popen"), (builtins, "eval"), (builtins, "exec")):
        monkeypatch.setattr(module, name, trap(name))
    PWNED.clear()
    yield calls
    assert not calls and not PWNED, (calls, PWNED)


def evil_npy():
    return npy(np.array([Evil(), 1], dtype=object))


@pytest.mark.parametrize("where", ["x", "y", "x_test"])
def test_pickled_npz_refused_by_data_loaders(tmp_path, tripwires, where):
    arrays = {
        "x": npy(np.ones((10, 2))),
        "y": npy(np.arange(10) % 2),
        "x_test": npy(np.ones((3, 2))),
        "y_test": npy(np.zeros(3, int)),
    }
    arrays[where] = evil_npy()
    path = tmp_path / "evil.npz"
    path.write_bytes(zip_bytes([(f"{k}.npy", v) for k, v in arrays.items()]))
    with pytest.raises(HornError, match=r"evil\.npz.*pickled"):
        load_dataset({"name": "npz", "path": str(path)})
    with pytest.raises(HornError, match=r"evil\.npz.*pickled"):
        load_features(path)
    npy_path = tmp_path / "evil.npy"
    npy_path.write_bytes(evil_npy())
    with pytest.raises(HornError, match=r"evil\.npy.*pickled"):
        load_features(npy_path)


@pytest.mark.parametrize("where", ["__header__", "param/0.W", "param/1.b"])
def test_pickled_npz_refused_by_model_loader(tmp_path, tripwires, where):
    members = {f"{k}.npy": npy(v) for k, v in BASE_ARRAYS.items()}
    members["__header__.npy"] = npy(header_array(json.dumps(BASE_HEADER), "uint8"))
    members[f"{where}.npy"] = evil_npy()
    path = tmp_path / "evil.npz"
    path.write_bytes(zip_bytes(members.items()))
    with pytest.raises(HornError, match=r"evil\.npz.*pickled"):
        Model.load(path)


CODE_TYPES = [
    "os:system",
    "builtins:eval",
    "builtins:exec",
    "os:popen",
    "__import__('os')",
    "__import__('os').system('touch /tmp/horn-pwned')",
    "eval",
    "exec",
]


@pytest.mark.parametrize("kind", CODE_TYPES)
def test_job_naming_code_as_layer_is_refused_without_calling_it(tmp_path, tripwires, kind):
    path = tmp_path / "job.toml"
    path.write_text(GOOD_JOB.replace('"dense", units = 8', f"{json.dumps(kind)}, units = 8"))
    with pytest.raises(HornError, match="job.toml: model.layers\\[0\\]"):
        load_job(path)
    path.write_text(GOOD_JOB)
    with pytest.raises(HornError, match=r"^--set .model.loss=.*.: model.loss"):  # issue 11
        load_job(path, [f"model.loss={kind}"])
    with pytest.raises(HornError, match=r"^--set .model.layers.1.type=.*.: model.layers\[1\]"):
        load_job(path, [f"model.layers.1.type={kind}"])


@pytest.mark.parametrize("kind", LAYER_TYPES)
def test_every_fuzzed_layer_type_loads_or_is_one_clear_line(tmp_path, tripwires, kind):
    path = tmp_path / "job.toml"
    path.write_text(GOOD_JOB.replace('"dense", units = 8', f"{json.dumps(kind)}, units = 8"))
    only_horn_errors(lambda: load_job(path), f"{path}: model.layers[0]")
    only_horn_errors(lambda: load_job(path, [f"model.loss={json.dumps(kind)}"]), str(path), "--set")


@pytest.mark.parametrize("kind", CODE_TYPES)
def test_model_file_naming_code_as_layer_is_refused_without_calling_it(tmp_path, tripwires, kind):
    header = json.loads(json.dumps(BASE_HEADER))
    header["spec"]["layers"][0]["type"] = kind
    members = [(f"{k}.npy", npy(v)) for k, v in BASE_ARRAYS.items()]
    members.append(("__header__.npy", npy(header_array(json.dumps(header), "uint8"))))
    path = tmp_path / "evil.npz"
    path.write_bytes(zip_bytes(members))
    with pytest.raises(HornError, match="evil.npz"):
        Model.load(path)


# =========================================================================== regressions
# Inputs the fuzzers found: each once escaped as another exception, printed a message of
# several lines, or loaded into something unusable. Kept as fast, readable examples.
REGRESSION_JOBS = [
    ("job.toml", "x = " + "[" * 3000, (), "malformed toml: arrays or tables nested too deeply"),
    ("job.json", '{"a": ' + "[" * 3000, (), "malformed json: arrays or tables nested too deeply"),
    ("job.toml", "x = " + "9" * 5000, (), "malformed toml: Exceeds the limit"),
    ("job.toml", GOOD_JOB.replace("lr = 0.1", "lr = 1" + "0" * 400), (), "lr: expected a number"),
    ("job.toml", GOOD_JOB + '"a\\nb" = 1\n', (), "train.'a\\nb': unknown key"),
    ("job.toml", GOOD_JOB, ["model.layers.\u00b2.units=1"], "expected a list index below 2"),
    ("job.toml", GOOD_JOB, ["train.lr=" + "[" * 3000], "train.lr: expected a number"),
    ("job.toml", GOOD_JOB, ["model.layers.0.bias=1979-05-27"], "option 'bias'"),
    ("job.toml", GOOD_JOB, ["model.layers.0.units=inf"], "option 'units'"),
    (
        "job.toml",
        GOOD_JOB,
        ["model.loss={type='softmax_cross_entropy', temperature=nan}"],
        "option 'temperature'",
    ),
]


@pytest.mark.parametrize("name, text, overrides, fragment", REGRESSION_JOBS)
def test_regression_jobs(tmp_path, name, text, overrides, fragment):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(HornError) as info:
        load_job(path, overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def forged_member(header):
    return zip_bytes([("x.npy", npy_raw(header)), ("y.npy", npy(np.zeros(3, int)))])


REGRESSION_DATA = [
    (
        forged_member("{'descr': '<f4', 'fortran_order': False, 'shape': (2**70,), }"),
        "array 'x': expected a valid .npy",
    ),
    (
        forged_member("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"),
        "header declares 1099511627776 float32 (4398046511104 bytes) but the member holds",
    ),
    (forged_member("{[]: 1}"), "array 'x': expected a valid .npy header"),
    (forged_member("x" * 20000), "Header info length (20000) is large"),
    (
        zip_bytes([("x", b"not an array"), ("y.npy", npy(np.zeros(3)))]),
        "array 'x': expected a .npy member, found other data",
    ),
    (npy(np.ones((3, 2))), "expected an .npz archive, found a single .npy array"),
    (b"\x80\x04K\x01.", "expected an .npz archive, found no zip archive"),
    (
        zip_bytes(
            [
                ("x.npy", npy(np.ones((10, 2)))),
                ("y.npy", npy(np.array([0, 1] * 4 + [2**64 - 1, 1], np.uint64))),
            ]
        ),
        "non-negative integer labels, found 18446744073709551615",
    ),
    (
        zip_bytes(
            [
                ("x.npy", npy(np.array([[3.4e38]] * 8 + [[-3.4e38]] * 2, np.float32))),
                ("y.npy", npy(np.arange(10) % 2)),
            ]
        ),
        "finite after standard scaling",
    ),
]


@pytest.mark.parametrize("data, fragment", REGRESSION_DATA)
def test_regression_data_files(tmp_path, data, fragment):
    path = tmp_path / "d.npz"
    path.write_bytes(data)
    with pytest.raises(HornError) as info:
        load_dataset({"name": "npz", "path": str(path), "scale": "standard", "val_fraction": 0.0})
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def model_file(header=None, raw_header=None, **arrays):
    members = [(f"{k}.npy", npy(v)) for k, v in {**BASE_ARRAYS, **arrays}.items()]
    text = json.dumps(BASE_HEADER if header is None else header)
    members.append(
        ("__header__", raw_header)
        if raw_header is not None
        else ("__header__.npy", npy(header_array(text, "uint8")))
    )
    return zip_bytes(members)


def respec(**changes):
    header = json.loads(json.dumps(BASE_HEADER))
    header["spec"].update(changes)
    return header


REGRESSION_MODELS = [
    (
        model_file(raw_header=json.dumps(BASE_HEADER).encode()),
        "array '__header__': expected a .npy member",
    ),
    (
        zip_bytes([("__header__.npy", npy(header_array("[" * 100000, "uint8")))]),
        "unreadable header: nested too deeply",
    ),
    (
        zip_bytes([("__header__.npy", npy(np.zeros(2**20, "V0")))]),
        "expected __header__ to be 1-D uint8",
    ),
    (npy(np.ones(3)), "expected an .npz archive, found a single .npy array"),
    (
        model_file(respec(in_features="abc")),
        "in_features: expected a positive integer, found 'abc'",
    ),
    (
        model_file(
            respec(
                layers=[
                    {"type": "dense", "units": 4, "init": "bogus"},
                    {"type": "dense", "units": 3},
                ]
            )
        ),
        "parameter 'W': expected an initializer",
    ),
    (
        model_file(respec(layers=[{"type": "os:system"}])),
        "model.layers[0]: 'os:system' is not a horn.Layer",
    ),
    (
        model_file(**{"param/0.W": np.full((5, 4), np.nan, np.float32)}),
        "NaN or Inf in parameter 'W' of layer 0",
    ),
    (
        model_file(**{"param/0.b": np.array(["a", "b", "c", "d"])}),
        "array 'param/0.b' has dtype <U1",
    ),
    (model_file({**BASE_HEADER, "meta": [1]}), "meta to be a table, found list"),
]


@pytest.mark.parametrize("data, fragment", REGRESSION_MODELS)
def test_regression_model_files(tmp_path, data, fragment):
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    with pytest.raises(HornError) as info:
        Model.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message, message
