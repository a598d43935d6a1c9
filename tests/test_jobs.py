"""Job files: validation errors name file, line, key, expected and found."""

import json
import sys

import pytest

from horn.barriers.registry import strategies
from horn.errors import HornError
from horn.jobs import SECTIONS, apply_override, key_fields, load_job, write_resolved

GOOD = """
name = "t"
[model]
layers = [{ type = "dense", units = 8, activation = "relu" }, { type = "dense", units = 10 }]
[train]
epochs = 2
lr = 0.1
"""


def write(tmp_path, text, name="job.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_job_is_frozen_with_defaults(tmp_path):
    job = load_job(write(tmp_path, GOOD))
    assert job.train.lr == 0.1 and job.train.batch_size == 64 and job.data.name == "digits"
    with pytest.raises(AttributeError):
        job.train.lr = 1


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("[train\nlr = 1", r"job.toml: malformed toml: .*line 1"),
        (GOOD + "lrr = 3\n", r"job.toml:8: train.lrr: unknown key \(did you mean 'lr'\?\)"),
        (
            GOOD.replace("lr = 0.1", "lr = -1"),
            r"job.toml:7: train.lr: expected a number > 0.0, found -1",
        ),
        (
            GOOD.replace("epochs = 2", 'epochs = "2"'),
            r"job.toml:6: train.epochs: expected an integer >= 1, found '2'",
        ),
        (
            GOOD + "[trian]\n",
            r"job.toml:8: trian: unknown section or key \(did you mean 'train'\?\)",
        ),
        (
            GOOD.replace("units = 8,", "unit = 8,"),
            r"model.layers\[0\]: unknown option 'unit' .*did you mean 'units'",
        ),
        (
            GOOD.replace('"dense", units = 8', '"dens", units = 8'),
            r"unknown layer type 'dens' \(did you mean 'dense'\?\)",
        ),
        (
            GOOD.replace('"dense", units = 8', '"os:system", units = 8'),
            r"'os:system' is not a horn.Layer subclass",
        ),
        (
            GOOD.replace('"dense", units = 8', "\"__import__('os')\", units = 8"),
            r"unknown layer type",
        ),
        (GOOD.replace("units = 8", "units = -8"), r"units must be a positive integer, found -8"),
        (GOOD + "[data]\nname = 'digit'\n", r"job.toml:9: data.name: expected one of 'digits'"),
        (
            GOOD + "[parallel.ensemble]\nalpha = 0.2\n",
            r"job.toml:8: parallel.ensemble: applies only to barrier = 'ensemble', found barrier = 'average'",
        ),
        (
            GOOD + "[parallel]\nalpha = 0.2\n",
            r"job.toml:9: parallel.alpha: moved; set it as \[parallel.ensemble\] alpha",
        ),
        (
            GOOD + "[parallel]\nsubnet_scale = 'sqrt'\n",
            r"job.toml:9: parallel.subnet_scale: moved; set it as \[parallel.subnet\] scale",
        ),
        (
            GOOD
            + "[parallel]\nbarrier = 'ensemble'\n[parallel.ensemble]\nteacher_data = 'local'\ndistill_file = 'x.npz'\n",
            r"job.toml:12: parallel.ensemble.distill_file: needs teacher_data = 'shared'",
        ),
        (
            GOOD + "[parallel]\nbarrier = 'ensembel'\n",
            r"job.toml:9: parallel.barrier: expected one of .*'ensemble'.* \(did you mean 'ensemble'\?\)",
        ),
        (
            GOOD + "[parallel.subnet]\nweights = [1, 'a']\n",
            r"job.toml:9: parallel.subnet.weights: expected a list of positive numbers",
        ),
        (
            GOOD
            + "[parallel]\nworkers = 2\nbarrier = 'ensemble'\n[parallel.subnet]\nwarmup_steps = 5\n",
            r"job.toml:12: parallel.subnet.warmup_steps: sub-network warm-up is not combined",
        ),
        (
            GOOD
            + "[parallel]\nworkers = 2\nbarrier = 'ensemble'\n[parallel.subnet]\ncooldown_steps = 5\n",
            r"job.toml:12: parallel.subnet.cooldown_steps: sub-network cool-down is not combined",
        ),
        (
            GOOD + '[data]\npath = "a\\u0000b"\n',
            r"job.toml:9: data.path: expected a file name, found one with a NUL byte",
        ),
        (
            GOOD + "[parallel]\nshard_alpha = 0.1\n",
            r"job.toml:9: parallel.shard_alpha: applies only to shard = 'dirichlet'",
        ),
        (GOOD + "[parallel]\naverage = 5\n", r"job.toml:9: parallel.average: expected a table"),
        (
            GOOD + '[log]\ndir = "~horn-no-such-user/runs"\n',
            r"job.toml:9: log.dir: expected '~horn-no-such-user' to name a home directory",
        ),
    ],
)
def test_bad_jobs_give_one_clear_line(tmp_path, text, pattern):
    with pytest.raises(HornError, match=pattern) as info:
        load_job(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_overrides_parse_toml_values(tmp_path):
    job = load_job(
        write(tmp_path, GOOD),
        ["train.lr=0.05", "train.nesterov=true", "model.layers.0.units=32", "data.name=digits"],
    )
    assert job.train.lr == 0.05 and job.train.nesterov is True
    assert job.model.layers[0]["units"] == 32
    with pytest.raises(HornError, match="expected KEY=VALUE"):
        load_job(write(tmp_path, GOOD), ["train.lr"])
    with pytest.raises(HornError, match="list index below 2"):
        apply_override({"model": {"layers": [{}, {}]}}, "model.layers.5.units=1")


def test_resolved_json_loads_back_identically(tmp_path):
    job = load_job(write(tmp_path, GOOD))
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job.to_dict()))
    again = load_job(path)
    assert again.to_dict() == job.to_dict() and again.digest() == job.digest()


def test_custom_layer_by_import_path(tmp_path):
    text = GOOD.replace(
        '"dense", units = 8, activation = "relu"', '"horn.layers.dense:Dense", units = 8'
    )
    job = load_job(write(tmp_path, text))
    assert job.model.layers[0]["type"] == "horn.layers.dense:Dense"


def test_a_horn_error_is_one_line_whatever_it_quotes():
    """A file name (or any quoted value) may hold a newline or carriage return."""
    from horn.errors import DivergenceError, HornError

    for cls in (HornError, DivergenceError):
        message = str(cls("data.path: /tmp/a\rb\nc: expected a file"))
        assert "\n" not in message and "\r" not in message
        assert message == "data.path: /tmp/a\\rb\\nc: expected a file"


def path_keys():
    """Every job key holding a file name, from the sections' and strategies' metadata (so
    a new one is covered unlisted): ``(dotted key, its kind, the --set items it needs)``."""
    keys = [
        (f"{name}.{f.name}", f.metadata["path"], [])
        for name, cls in SECTIONS.items()
        for f in key_fields(cls)
        if f.metadata.get("path")
    ]
    for name, strategy in strategies().items():
        needs = [f"parallel.barrier='{name}'"] if strategy.scope == "group" else []
        keys += [
            (f"parallel.{name}.{f.name}", f.metadata["path"], needs)
            for f in key_fields(strategy.settings)
            if f.metadata.get("path")
        ]
    return keys


def value_of(job, key):
    node = job
    for part in key.split("."):
        node = node.of(part) if part in strategies() else getattr(node, part)
    return node


def test_path_keys_are_found():
    found = {key for key, _, _ in path_keys()}
    assert {"data.path", "data.root", "log.dir", "model.imports"} <= found


@pytest.mark.parametrize("key, kind, needs", path_keys())
def test_every_path_key_expands_home_by_one_rule(tmp_path, monkeypatch, key, kind, needs):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "horn_test_home_module.py").write_text("")
    entry, expanded = "~/x", str(home / "x")
    if kind == "imports":  # a module: it is imported while the job loads
        entry, expanded = "~/horn_test_home_module.py", str(home / "horn_test_home_module.py")
    value = f'["{entry}"]' if kind == "imports" else f'"{entry}"'
    try:
        job = load_job(write(tmp_path, GOOD), [*needs, f"{key}={value}"])
    finally:
        sys.modules.pop("horn_test_home_module", None)
    assert value_of(job, key) == ([expanded] if kind == "imports" else expanded)


@pytest.mark.parametrize("key, kind, needs", path_keys())
def test_every_path_key_refuses_an_unknown_user(tmp_path, key, kind, needs):
    entry = "~horn-no-such-user/x.py"
    item = f'{key}=["{entry}"]' if kind == "imports" else f'{key}="{entry}"'
    with pytest.raises(HornError) as info:
        load_job(write(tmp_path, GOOD), [*needs, item])
    shown = f"{key}[0]" if kind == "imports" else key
    assert str(info.value) == (
        f"--set {item!r}: {shown}: expected '~horn-no-such-user' to name a home directory, "
        f"found no home directory for user 'horn-no-such-user' in {entry!r}"
    )


def test_resolved_job_makes_only_job_relative_paths_absolute(tmp_path):
    job = load_job(write(tmp_path, GOOD), ["data.root='data'", "log.dir='out'"])
    write_resolved(job, tmp_path / "job.json")
    doc = json.loads((tmp_path / "job.json").read_text())
    assert doc["data"]["root"] == str(tmp_path / "data")
    assert doc["log"]["dir"] == "out"  # relative to where horn runs, as it was


def test_name_from_the_file_name_says_so(tmp_path):
    path = write(tmp_path, GOOD.replace('name = "t"\n', ""), name="my job (copy).toml")
    with pytest.raises(HornError) as info:
        load_job(path)
    assert str(info.value) == (
        f"{path}: name: expected a short name of letters, digits, '-', '_' or '.', found "
        f"'my job (copy)', taken from the file name as the job sets no name; set one, "
        f"for example name = 'my-job-copy'"
    )
    assert load_job(path, ["name='copy'"]).name == "copy"
    with pytest.raises(HornError, match=r"^--set 'name=\"a b\"': name: expected a short name"):
        load_job(path, ['name="a b"'])


@pytest.mark.parametrize(
    "items, pattern",
    [
        (["parallel.average=5"], r"--set 'parallel.average=5': parallel.average: expected a table"),
        (
            ["parallel.ensemble={alpha=0.2}"],
            r"--set 'parallel.ensemble={alpha=0.2}': parallel.ensemble: applies only to barrier",
        ),
        (
            ['model.imports=["nope/x.py"]'],
            r"--set 'model.imports=\[\"nope/x.py\"\]': model.imports\[0\]: expected a .py file",
        ),
        (["train=3"], r"--set 'train=3': train: expected a table, found 3"),
    ],
)
def test_errors_about_set_keys_name_the_set(tmp_path, items, pattern):
    with pytest.raises(HornError, match=f"^{pattern}"):
        load_job(write(tmp_path, GOOD), items)
