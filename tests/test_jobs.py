"""Job files: validation errors name file, line, key, expected and found."""

import json

import pytest

from horn.errors import HornError
from horn.jobs import apply_override, load_job

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
