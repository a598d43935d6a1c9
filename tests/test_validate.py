"""Issue 11: validation that validates and errors that are errors.

``horn validate`` runs every check ``horn run`` makes before training (one function,
horn.runner.prepare), layer options are typed, a model that cannot fit is refused
before allocating, divergence that stays finite is caught, parallel settings are
never silently ignored, and every --set error names the --set.
"""

import json
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horn import memory
from horn.errors import DivergenceError, HornError
from horn.jobs import load_job
from horn.layer import Layer
from horn.model import layer_from_spec, layout
from horn.options import check_options, layer_table
from horn.runner import prepare
from tests.cli import ROOT, horn
from tests.mpirun import mpirun

LAYERS = (
    '[model]\nlayers = [{ type = "dense", units = 16, activation = "relu" }, '
    '{ type = "dense", units = 10 }]\n'
)
QUICK = '[train]\nepochs = 1\nbackend = "numpy"\n[log]\nplot = false\n'
REPO_ON_PATH = {"PYTHONPATH": str(ROOT)}  # user modules may import tests.user_layers


def job_file(tmp_path, body, name="job.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body) + "\n")
    return path


def one_error_line(result, code=2):
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horn: error: "), result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    return lines[0]


def data_files(tmp_path):
    """A pickled npz, an npz whose test labels exceed the training classes."""
    x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    y = np.arange(40) % 3
    np.savez(tmp_path / "pickled.npz", x=np.array([object()] * 40, dtype=object), y=y)
    np.savez(tmp_path / "labels.npz", x=x, y=y, x_test=x[:8], y_test=np.full(8, 7))
    np.savez(tmp_path / "good.npz", x=x, y=y)


# Defect 6: each of these validated "ok" before; run refused them (or crashed).
BAD_JOBS = {
    "classes": (LAYERS.replace("units = 10", "units = 12"), "has 10 classes"),
    "missing data": (LAYERS + "[data]\nname = 'npz'\npath = 'missing.npz'\n", "missing.npz"),
    "pickled npz": (LAYERS + "[data]\nname = 'npz'\npath = 'pickled.npz'\n", "object array"),
    "labels": (
        LAYERS.replace("units = 10", "units = 3") + "[data]\nname = 'npz'\npath = 'labels.npz'\n",
        "expected labels below 3",
    ),
    "initializer": (
        LAYERS.replace("units = 16,", 'units = 16, init = "bogus",'),
        "expected an initializer",
    ),
    "float units": (
        LAYERS.replace("units = 16", "units = 1e9"),
        "model.layers[0] (dense): option 'units': expected int, found 1000000000.0",
    ),
    "memory": (LAYERS.replace("units = 16", "units = 20_000_000"), "does not fit in memory"),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_validate_refuses_what_run_refuses(tmp_path, case, command):
    data_files(tmp_path)
    body, message = BAD_JOBS[case]
    path = job_file(tmp_path, body + ("" if "[train]" in body else QUICK))
    line = one_error_line(horn(command, path, "--set", f"log.dir='{tmp_path}'", cwd=tmp_path))
    assert message in line and ("job.toml" in line or ".npz" in line), line  # names the file


def test_validate_says_what_it_checked_and_trains_nothing(tmp_path):
    result = horn("validate", ROOT / "jobs/digits.toml", "--set", f"log.dir='{tmp_path}'")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    checks = [line.split(":")[0].strip() for line in lines[:-1]]
    assert checks == ["data", "model", "memory", "training", "layout", "step"], lines
    assert "10 outputs for 10 classes" in result.stdout and "GiB available" in result.stdout
    assert lines[-1].endswith(
        "digits.toml: ok (digits: " + str(ROOT / "jobs/digits.toml") + ")"
    ) and not list(tmp_path.iterdir())


def test_prepare_is_the_one_pre_training_check_and_sizes_memory(monkeypatch):
    job = load_job(ROOT / "jobs/digits.toml")
    setup = prepare(job)
    need = setup.memory
    assert need.parameters >= setup.model.num_params
    # params, grads, initial values, momentum: four float32 buffers, plus activations
    assert need.rank_bytes == need.parameters * 4 * 4 + need.activation_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda: need.rank_bytes - 1)
    with pytest.raises(
        HornError,
        match=r"does not fit in memory: it needs about .* is "
        r"available",
    ):
        prepare(job)
    monkeypatch.setattr(memory, "available_bytes", lambda: need.rank_bytes)
    assert prepare(job).available == need.rank_bytes


@pytest.mark.parametrize(
    "optimizer,momentum,buffers", [("sgd", 0.0, 3), ("sgd", 0.9, 4), ("adam", 0.9, 5)]
)
def test_memory_counts_the_optimizer_state(optimizer, momentum, buffers):
    job = load_job(
        ROOT / "jobs/digits.toml", [f"train.optimizer={optimizer!r}", f"train.momentum={momentum}"]
    )
    assert sum(memory.parameter_buffers(job).values()) == buffers


def test_available_memory_reads_meminfo(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n")
    assert memory.available_bytes(path) == 1000 * 1024
    assert memory.available_bytes(tmp_path / "none") is None


# Defect 7: silent coercions.
@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("units", "true", "expected int, found True"),
        ("units", '"abc"', "expected int, found 'abc'"),
        ("bias", '"no"', "option 'bias': expected bool, found 'no'"),
        ("activation", "1", "option 'activation': expected str, found 1"),
    ],
)
def test_layer_options_are_typed(tmp_path, option, value, expected):
    body = LAYERS.replace(
        "units = 16" if option == "units" else 'activation = "relu"', f"{option} = {value}"
    )
    line = one_error_line(horn("validate", job_file(tmp_path, body)))
    assert "job.toml" in line and "model.layers[0] (dense)" in line and expected in line, line


class Annotated(Layer):
    def __init__(self, scale: float = 1.0, note=None, shape: list[int] | None = None):
        self.scale, self.note, self.shape = scale, note, shape


def test_user_layers_get_the_check_from_their_annotations():
    assert Annotated(scale=2).scale == 2  # an int is accepted for a float
    assert Annotated(note=object()).note is not None  # unannotated: passed through
    assert Annotated(shape=[1, 2]).shape == [1, 2]
    for bad in ({"scale": True}, {"scale": "2"}, {"shape": [1, "2"]}, {"shape": 3}):
        with pytest.raises(TypeError, match=f"option '{next(iter(bad))}': expected"):
            Annotated(**bad)
    with pytest.raises(
        HornError,
        match=r"x.toml: model.layers\[2\] \(tests.test_validate:"
        r"Annotated\): option 'scale': expected float, found 'a'",
    ):
        layer_from_spec(
            {"type": "tests.test_validate:Annotated", "scale": "a"}, "x.toml: model.layers[2]"
        )


def test_check_options_reads_the_constructor():
    check_options(Annotated, {"scale": 1, "note": "x"})
    with pytest.raises(TypeError, match=r"expected list\[int\] \| None, found 'x'"):
        check_options(Annotated, {"shape": "x"})


def test_horn_layers_lists_every_layer_with_its_options():
    result = horn("layers")
    assert result.returncode == 0, result.stderr
    built_ins = [line for line in layer_table().splitlines() if "  [horn.layers." in line]
    assert result.stdout.strip().splitlines() == built_ins  # this process may know more
    dense = next(line for line in result.stdout.splitlines() if line.startswith("dense "))
    assert "units: int, activation: str = 'identity'" in dense and "bias: bool = True" in dense
    assert any(
        line.startswith("conv2d ") and "kernel: int | list[int] = 3" in line
        for line in result.stdout.splitlines()
    )


def test_horn_layers_lists_the_layers_of_an_imported_module(tmp_path):
    (tmp_path / "sublayers.py").write_text(SUBNET_LAYERS)
    result = horn("layers", "--import", "sublayers", cwd=tmp_path, env=REPO_ON_PATH)
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stdout.splitlines() if "[sublayers:" in line]
    assert [line.split()[0] for line in ours] == ["gain", "scale_units", "unflatten"], ours
    assert "shape: list[int]" in ours[-1]
    built_ins = [line for line in layer_table().splitlines() if "  [horn.layers." in line]
    assert len(result.stdout.splitlines()) == len(ours) + len(built_ins)
    missing = one_error_line(horn("layers", "--import", "nosuch", cwd=tmp_path, env=REPO_ON_PATH))
    assert "--import[0]: no module 'nosuch'" in missing, missing


# Defect 5: tracebacks that never happen.
def test_resume_of_another_architecture_names_the_checkpoint(tmp_path):
    path = job_file(
        tmp_path, LAYERS + QUICK + f"dir = '{tmp_path / 'runs'}'\n[checkpoint]\nevery = 5\n"
    )
    assert horn("run", path, "--quiet").returncode == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    job = json.loads((run_dir / "job.json").read_text())
    job["model"]["layers"][0]["units"] = 17
    (run_dir / "job.json").write_text(json.dumps(job))
    line = one_error_line(horn("run", "--resume", run_dir))
    assert "checkpoints/ckpt-" in line and "another architecture" in line, line
    assert "(64, 16)" in line and "(64, 17)" in line, line
    for manifest in (run_dir / "checkpoints").glob("*.json"):  # an older manifest: no shapes
        record = json.loads(manifest.read_text())
        del record["parameters"]
        manifest.write_text(json.dumps(record))
    line = one_error_line(horn("run", "--resume", run_dir))
    assert "checkpoints/ckpt-" in line and "'rank0/params' holds" in line, line


@pytest.mark.parametrize(
    "weights,found",
    [
        ('["a", 1]', "['a', 1]"),
        ("[1, true]", "[1, True]"),
        ("[1, -2]", "[1, -2]"),
        ("[1, nan]", "[1, nan]"),
        ("[1, 2, 3]", "expected 2 shares (one per worker)"),
    ],
)
def test_partition_weights_are_checked(tmp_path, weights, found):
    body = (
        LAYERS + "[parallel]\nworkers = 2\n[parallel.subnet]\npartition = 'weighted'\n"
        f"weights = {weights}\n"
    )
    line = one_error_line(horn("validate", job_file(tmp_path, body)))
    assert "job.toml:7: parallel.subnet.weights: expected" in line and found in line, line


@pytest.mark.parametrize(
    "item,message",
    [
        ("train.lr=abc", "train.lr: expected a number"),
        ("train.lrr=1", "train.lrr: unknown key"),
        ("model.layers.0.units=true", "model.layers[0] (dense): option 'units': expected int"),
        ("model.layers.1.units=12", "model.layers[1] makes the model output 12 values"),
        ("parallel.groups=2", "needs 2 ranks"),
        ("parallel.subnet.weights=['x']", "parallel.subnet.weights: expected"),
        ("parallel.partition_weights=[1]", "parallel.partition_weights: moved"),
    ],
)
def test_every_set_error_names_the_set(tmp_path, item, message):
    path = job_file(tmp_path, LAYERS + QUICK)
    for command in ("validate", "run"):
        if command == "validate" and item.startswith("parallel.groups"):
            continue  # validate reports the layout a job needs, see below
        line = one_error_line(horn(command, path, "--set", item, "--set", "train.epochs=1"))
        assert line.startswith(f"horn: error: --set {item!r}: ") and message in line, line


# Defect 8: divergence that stays finite.
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("lr", ["1e10", "1e30"])
def test_divergence_is_caught_without_numpy_warnings(tmp_path, backend, lr):
    path = job_file(tmp_path, LAYERS + QUICK.replace("numpy", backend))
    line = one_error_line(
        horn("run", path, "--quiet", "--set", f"train.lr={lr}", "--set", f"log.dir='{tmp_path}'"),
        code=3,
    )
    assert "training diverged at step" in line and "of layer" in line, line


def test_an_exploding_loss_stops_the_trainer_under_on_nan_stop():
    from tests.test_trainer import trainer

    t, model = trainer(every=0, skip=False)
    t.schedule = lambda step: 1e10
    with pytest.raises(DivergenceError, match=r"loss is .* over 10000 times its first value"):
        t.run()


# Defect 9: one rule with and without mpirun.
def test_parallel_settings_without_mpirun_refuse_with_the_command(tmp_path):
    path = job_file(tmp_path, LAYERS + QUICK + "[parallel]\ngroups = 4\n")
    line = one_error_line(horn("run", path))
    assert f"run: mpirun --oversubscribe -n 4 horn run {path}" in line, line
    result = horn("validate", path)
    assert result.returncode == 0 and "layout:    4 ranks: mpirun" in result.stdout
    refused = mpirun(1, ["-m", "horn.cli", "run", str(path)])  # the same rule under mpirun
    assert refused.returncode != 0 and "parallel.groups=4" in refused.stderr + refused.stdout


# ---- sub-network layouts: validate builds and steps what each rank would train ----------
SUBNET_LAYERS = '''
import horn
from tests.user_layers import Gain


@horn.register_layer("gain")
class NoProtocol(Gain):
    """The default partition_role (None): no sub-network can hold it."""


@horn.register_layer("scale_units")
class AxesLeftOut(Gain):
    """A through layer whose partition_axes() (the default, {}) leaves out its gain."""

    partition_role = "through"


@horn.register_layer("unflatten")
class Unflatten(horn.Layer):
    """A through layer whose option fixes a shape: wrong for a worker's fewer units."""

    partition_role = "through"

    def __init__(self, shape: list[int]):
        self.shape = shape

    def build(self, in_features):
        return tuple(self.shape)

    def map_partition(self, kept):
        import numpy as np

        return np.unique(np.asarray(kept, np.int64) // int(np.prod(self.shape[1:])))

    def forward(self, x, train):
        self.in_shape = x.shape
        return x.reshape(len(x), *self.shape)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
'''
DENSE = '{ type = "dense", units = 16, activation = "relu" }'
SUBNET_DEFECTS = {
    "no protocol": (
        f'{DENSE}, {{ type = "gain" }}, {DENSE}',
        "",
        "does not implement the partition protocol",
    ),
    "axes left out": (
        f'{DENSE}, {{ type = "scale_units" }}, {DENSE}',
        "",
        "partition_axes() must name every parameter",
    ),
    "dropconnect on conv2d": (
        '{ type = "conv2d", channels = 4, padding = 1 }, { type = "flatten" }, ' + DENSE,
        "[parallel.subnet]\ndropconnect = 0.2\n",
        "has no DropConnect variant",
    ),
    "one split layer": ('{ type = "relu" }', "", "need at least two dense layers"),
    "a fixed shape": (
        '{ type = "dense", units = 32 }, { type = "unflatten", shape = [2, 4, 4] }, '
        '{ type = "conv2d", channels = 4, padding = 1 }, { type = "flatten" }',
        "",
        "in forward of layer 1 (unflatten)",
    ),
}


@pytest.mark.parametrize("case", sorted(SUBNET_DEFECTS))
def test_validate_refuses_what_a_sub_network_run_refuses(tmp_path, case):
    """Run meets these only on its ranks, when the strategy builds each worker's compact
    net and steps it; validate builds and steps them too, and says the same."""
    layers, extra, message = SUBNET_DEFECTS[case]
    (tmp_path / "sublayers.py").write_text(SUBNET_LAYERS)
    path = job_file(
        tmp_path,
        f'name = "sub"\n[data]\nname = "digits"\n[model]\nimports = ["sublayers"]\n'
        f'layers = [{layers}, {{ type = "dense", units = 10 }}]\n{QUICK}'
        f"[parallel]\ngroups = 1\nworkers = 2\n{extra}",
    )
    line = one_error_line(horn("validate", path, cwd=tmp_path, env=REPO_ON_PATH))
    assert message in line and str(path) in line, line
    if case in ("no protocol", "a fixed shape"):  # the protocol's checks; a layer's own failure
        ran = mpirun(2, ["-m", "horn.cli", "run", path, "--set", f"log.dir='{tmp_path}'"], 120)
        assert ran.returncode != 0 and message in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr


def distill_files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "narrow.npy", rng.random((50, 63), np.float32))
    nan = rng.random((50, 64), np.float32)
    nan[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.npy", "missing.npy: expected an input file, found nothing"),
        ("narrow.npy", "distill_file has 63 features per row, the data (digits) has 64"),
        ("nan.npy", "nan.npy: expected finite features (within float32 range"),
    ],
)
def test_validate_reads_the_distillation_file_as_the_ranks_do(tmp_path, name, message):
    """With 2 groups and with the layout left to mpirun (groups = 0)."""
    distill_files(tmp_path)
    for groups in (0, 2):
        path = job_file(
            tmp_path,
            f'name = "ec"\n[data]\nname = "digits"\n{LAYERS}{QUICK}[parallel]\n'
            f'groups = {groups}\nbarrier = "ensemble"\nlocal_steps = 20\n'
            f'[parallel.ensemble]\ndistill_file = "{name}"\n',
        )
        line = one_error_line(horn("validate", path, cwd=tmp_path))
        assert message in line and str(path) in line, line
    if name == "narrow.npy":  # the ranks read it with the same function
        ran = mpirun(2, ["-m", "horn.cli", "run", path, "--set", f"log.dir='{tmp_path}'"], 120)
        assert ran.returncode == 2 and message in ran.stderr, ran.stderr


FLOAT_KEYS = ["train.lr", "train.eps", "train.weight_decay", "parallel.ensemble.temperature"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    key=st.sampled_from(FLOAT_KEYS),
    value=st.floats(min_value=3.5e38, max_value=1e308).flatmap(lambda v: st.sampled_from([v, -v])),
)
def test_a_float_setting_beyond_float32_is_refused_naming_it(key, value):
    """Training computes in float32: 1e300 would overflow to inf in the kernels (or
    leave a raw numpy warning and a model that learns nothing)."""
    with pytest.raises(HornError) as refused:
        load_job(ROOT / "jobs/digits.toml", [f"{key}={value!r}"])
    message = str(refused.value)
    assert message.startswith(f"--set '{key}={value!r}': {key}: expected "), message
    assert "within float32 range" in message or "at most" in message or ">" in message, message


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    layer=st.sampled_from([("batch_norm", "eps"), ("batch_norm", "momentum"), ("dropout", "p")]),
    value=st.floats(min_value=3.5e38, max_value=1e308),
)
def test_a_float_layer_option_beyond_float32_is_refused_naming_it(layer, value):
    kind, option = layer
    with pytest.raises(HornError, match=rf"\({kind}\): (option '{option}'|{option} must)"):
        layer_from_spec({"type": kind, option: value}, "job.toml: model.layers[0]")


IMAGE_LAYERS = '{ type = "conv2d", channels = 4, padding = 1 }, { type = "flatten" }, '


@pytest.mark.parametrize("first", ["batch_norm", "relu", "dropout"])
def test_layers_of_any_rank_before_a_conv_take_the_data_images(tmp_path, first):
    path = job_file(
        tmp_path,
        f'[data]\nname = "digits"\n[model]\nlayers = [{{ type = "{first}" }}, '
        f'{IMAGE_LAYERS}{{ type = "dense", units = 10 }}]\n{QUICK}',
    )
    result = horn("validate", path)
    assert result.returncode == 0, result.stderr
    assert "built on samples of shape (1, 8, 8)" in result.stdout, result.stdout


def test_model_inputs_that_do_not_suit_the_first_layer_name_the_set(tmp_path):
    path = job_file(
        tmp_path,
        f'[data]\nname = "digits"\n[model]\nlayers = [{IMAGE_LAYERS}'
        f'{{ type = "dense", units = 10 }}]\n{QUICK}',
    )
    line = one_error_line(horn("validate", path, "--set", "model.inputs=64"))
    assert line.startswith("horn: error: --set 'model.inputs=64': model.inputs = 64 gives"), line
    assert "model.layers[0] (conv2d) takes samples of 3 axes" in line


@settings(max_examples=40, deadline=None, derandomize=True)
@given(padding=st.integers(10**5, 10**15), stride=st.integers(1, 3))
def test_a_layer_whose_output_cannot_fit_is_named_itself(padding, stride):
    """Not the first layer after it whose parameters it makes too large."""
    layers = [
        layer_from_spec(
            {"type": "conv2d", "channels": 2, "padding": padding, "stride": stride}, "x"
        ),
        layer_from_spec({"type": "flatten"}, "x"),
        layer_from_spec({"type": "dense", "units": 3}, "x"),
    ]
    with pytest.raises(HornError, match=r"^layer 0 \(conv2d\): outputs samples of shape"):
        layout(layers, (1, 8, 8))


# ---- a user's layer that misbehaves: one line, never exit 0, caught by validate --------
MISBEHAVING = """
import sys

import horn

STAGE, ACTION = {stage!r}, {action!r}


def misbehave(stage):
    if stage == STAGE:
        if ACTION == "exit":
            sys.exit(0)
        raise RuntimeError(f"misbehaved in {{stage}}")


misbehave("import")


@horn.register_layer("odd")
class Odd(horn.Layer):
    def build(self, in_features):
        misbehave("build")
        self.steps = 0
        return in_features

    def forward(self, x, train=False):
        self.steps += train
        misbehave("training forward" if train else "evaluation forward")
        if self.steps == 3:
            misbehave("third step")
        return x

    def backward(self, dy):
        misbehave("backward")
        return dy
"""
STAGES = ["import", "build", "training forward", "evaluation forward", "backward", "third step"]


@pytest.mark.parametrize("action", ["raise", "exit"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_misbehaving_user_layer_fails_on_one_line_and_never_exits_0(tmp_path, stage, action):
    """A raise or a ``sys.exit(0)`` anywhere in a user's module: run fails on one line
    naming the layer (exit 2 while the model is made, 1 in training), and validate fails the
    same way on everything short of a late step, which only a run can meet."""
    (tmp_path / "odd.py").write_text(MISBEHAVING.format(stage=stage, action=action))
    path = job_file(
        tmp_path,
        '[data]\nname = "digits"\nlimit = 200\n[model]\nimports = ["odd"]\nlayers = ['
        f'{DENSE}, {{ type = "odd" }}, {{ type = "dense", units = 10 }}]\n{QUICK}',
    )
    code = 2 if stage in ("import", "build") else 1
    ran = horn("run", path, "--quiet", "--set", f"log.dir='{tmp_path / 'runs'}'", cwd=tmp_path)
    line = one_error_line(ran, code)
    said = "sys.exit(0)" if action == "exit" else f"misbehaved in {stage}"
    assert said in line, line
    assert stage == "import" or "layer 1 (odd)" in line, line
    validated = horn("validate", path, cwd=tmp_path)
    if stage == "third step":
        assert validated.returncode == 0, validated.stderr
    else:
        line = one_error_line(validated)
        assert said in line and (stage in ("import", "build") or str(path) in line), line


@pytest.mark.parametrize(
    "default, shown",
    [("abs", "<built-in function abs>"), ("np.float32(1)", "np.float32(1.0)"), ("nan", "nan")],
)
def test_a_user_default_a_model_file_cannot_hold_is_refused_before_training(
    tmp_path, default, shown
):
    (tmp_path / "keeps.py").write_text(
        "import numpy as np\nimport horn\nnan = float('nan')\n\n\n"
        '@horn.register_layer("keeps")\nclass Keeps(horn.Layer):\n'
        f"    def __init__(self, how={default}):\n        self.how = how\n\n"
        "    def build(self, n):\n        return n\n\n"
        "    def forward(self, x, train=False):\n        return x\n\n"
        "    def backward(self, dy):\n        return dy\n"
    )
    path = job_file(
        tmp_path,
        '[data]\nname = "digits"\nlimit = 200\n[model]\nimports = ["keeps"]\nlayers = ['
        f'{DENSE}, {{ type = "keeps" }}, {{ type = "dense", units = 10 }}]\n{QUICK}',
    )
    runs = tmp_path / "runs"
    for command in (["validate", path], ["run", path, "--set", f"log.dir='{runs}'"]):
        line = one_error_line(horn(*command, cwd=tmp_path))
        assert f"layer 1 (keeps): option 'how' is {shown}" in line, line
        assert "a model file cannot hold" in line, line
    assert not runs.exists()  # refused before a run directory was made


JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)
NOT_JSON = st.sampled_from([np.float32(1), np.int64(2), abs, np.ones(2), {1, 2}, b"x", 1j])


@settings(max_examples=200, deadline=None)
@given(value=JSON_LIKE | st.lists(NOT_JSON | JSON_LIKE, min_size=1, max_size=3))
def test_storable_is_what_a_model_file_gives_back(value):
    """``storable`` exactly when the JSON header writes the value and reads it back equal
    (tuples come back as lists, as a layer's list options take them)."""
    from horn.options import storable

    def listed(v):
        if isinstance(v, (list, tuple)):
            return [listed(e) for e in v]
        return {k: listed(e) for k, e in v.items()} if isinstance(v, dict) else v

    try:
        back = json.loads(json.dumps(value, allow_nan=False))
        same = back == listed(value) and json.dumps(back) == json.dumps(listed(value))
    except (TypeError, ValueError):
        same = False
    assert storable(value) == same, value


@pytest.mark.parametrize("groups, kind", [(2, "iid"), (3, "dirichlet")])
def test_fewer_training_samples_than_groups_is_refused_by_validate_and_run(tmp_path, groups, kind):
    """A group without a sample has no step to take (a rank crashed dividing by zero)."""
    path = job_file(
        tmp_path,
        f'[data]\nname = "digits"\nlimit = {groups - 1}\n{LAYERS}{QUICK}'
        f'[parallel]\ngroups = {groups}\nshard = "{kind}"\n',
    )
    message = f"{groups - 1} training sample(s) cannot be split into parallel.groups = {groups}"
    assert message in one_error_line(horn("validate", path))
    ran = mpirun(groups, ["-m", "horn.cli", "run", path, "--set", f"log.dir='{tmp_path}'"], 120)
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and not list(tmp_path.glob("job-*"))


@pytest.mark.parametrize("as_loss", [False, True])
def test_a_loss_among_the_layers_or_a_layer_as_the_loss_is_named(as_loss):
    """Every registered type: a loss is refused in model.layers and a layer in model.loss,
    on one line naming the key (it was a bare 'layer 1: expected a horn.Layer')."""
    from horn.layer import Loss
    from horn.registry import registered

    for name, cls in sorted(registered().items()):
        if issubclass(cls, Loss) == as_loss:
            continue
        where = "job.toml: model.loss" if as_loss else "job.toml: model.layers[1]"
        with pytest.raises(HornError) as refused:
            layer_from_spec({"type": name}, where, loss=as_loss)
        assert str(refused.value).startswith(f"{where}: expected a ") and repr(name) in str(
            refused.value
        ), refused.value
