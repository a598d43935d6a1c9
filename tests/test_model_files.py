"""Model files, a user's own layers and safe loading (issue 11, defects 2-5).

A job imports the modules it lists in ``model.imports`` (from its own directory
first); a model file records the class of each of the user's layers; eval,
predict and ``--resume`` find them again only through modules the user names,
and nothing a file says ever makes horn import a module.
"""

import json
import shutil
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from horn import registry
from horn.cli import main
from horn.ensemble_model import Ensemble, load_predictor
from horn.errors import HornError
from horn.jobs import load_job, write_resolved
from horn.layers import Dense, SoftmaxCrossEntropy
from horn.model import Model, read_npz
from tests.cli import ROOT, horn

PRELU = '''
import horn


@horn.register_layer("prelu")
class PReLU(horn.Layer):
    """Leaky ReLU with a learned slope per unit."""

    def __init__(self, slope=0.25):
        self.slope = slope

    def build(self, in_features):
        self.declare("a", (in_features,), init=lambda rng, shape, *_: [self.slope] * shape[0])
        return in_features

    def forward(self, x, train):
        self.x, self.negative = x, x < 0
        return x * self.xp.where(self.negative, self.params["a"], 1)

    def backward(self, dy):
        self.grads["a"][...] = (dy * self.x * self.negative).sum(axis=0)
        return dy * self.xp.where(self.negative, self.params["a"], 1)
'''
PRELU_JOB = """name = "pj"
[model]
imports = ["prelu"]
layers = [{ type = "dense", units = 32 }, { type = "prelu" }, { type = "dense", units = 10 }]
[train]
epochs = 2
[checkpoint]
every = 20
[log]
plot = false
"""


def hostile_source(tripwire):
    """A module whose import-time code leaves a file behind: proof it was imported."""
    return textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(tripwire)!r}).write_text("imported")
        import horn


        class Evil(horn.Layer):
            def forward(self, x, train):
                return x

            def backward(self, dy):
                return dy
    """)


@pytest.fixture(autouse=True)
def forget_test_modules(tmp_path_factory):
    """Modules a test imported from its temporary directories, and the layer names they
    registered, are forgotten afterwards, so every test imports (or refuses) afresh."""
    base = Path(tmp_path_factory.getbasetemp()).resolve()
    layers = dict(registry._LAYERS)
    yield
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and Path(origin).resolve().is_relative_to(base):
            del sys.modules[name]
    registry._LAYERS.clear()
    registry._LAYERS.update(layers)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """``hostile_mod`` importable from sys.path (and by subprocesses via PYTHONPATH)."""
    where = tmp_path / "site"
    where.mkdir()
    tripwire = tmp_path / "TRIPWIRE"
    (where / "hostile_mod.py").write_text(hostile_source(tripwire))
    monkeypatch.syspath_prepend(str(where))
    return {"dir": where, "tripwire": tripwire, "env": {"PYTHONPATH": f"{where}:{ROOT}"}}


def one_line_error(code, err, *fragments):
    """A refusal as the README promises: exit 2, one line, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("horn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ============================================================ a job with its own layer
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of a job whose layer lives next to it, trained by ``horn run`` as a user does
    (no PYTHONPATH: the job's directory is where ``model.imports`` finds the module)."""
    base = tmp_path_factory.mktemp("prelu")
    jobs = base / "jobs"
    jobs.mkdir()
    (jobs / "prelu.py").write_text(PRELU)
    (jobs / "job.toml").write_text(PRELU_JOB + f"dir = '{base / 'runs'}'\n")
    result = horn("run", jobs / "job.toml", "--quiet", cwd=base)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    accuracy = last.split("test accuracy ")[1].split()[0]
    run_dir = last.split("run directory ")[1]
    return {"base": base, "jobs": jobs, "run": Path(run_dir), "accuracy": accuracy}


def test_resolved_job_records_where_its_module_came_from(trained):
    job = json.loads((trained["run"] / "job.json").read_text())
    assert job["model"]["imports"] == [str(trained["jobs"] / "prelu.py")]


def test_model_file_names_the_class_of_a_users_layer(trained):
    header = json.loads(bytes(read_npz(trained["run"] / "model.npz")["__header__"]))
    spec = header["spec"]
    assert spec["layers"][1]["type"] == "prelu"
    assert spec["classes"] == {"prelu": "prelu:PReLU"}


def test_eval_without_naming_the_module_says_how_to(trained):
    result = horn("eval", trained["run"], cwd=trained["base"])
    one_line_error(result.returncode, result.stderr, "'prelu'", "--import prelu", "model.layers[1]")


def test_eval_and_predict_find_the_layer_through_import(trained, tmp_path):
    by_path = horn("eval", trained["run"], "--import", trained["jobs"] / "prelu.py", cwd=ROOT)
    assert by_path.returncode == 0, by_path.stderr
    assert by_path.stdout.split()[:3] == ["test", "accuracy", trained["accuracy"]]
    by_name = horn("eval", trained["run"], "--import", "prelu", cwd=trained["jobs"])
    assert by_name.returncode == 0 and by_name.stdout == by_path.stdout, by_name.stderr
    np.savez(tmp_path / "x.npz", x=load_digits().data[:7])
    out = tmp_path / "p.csv"
    predicted = horn(
        "predict",
        trained["run"],
        tmp_path / "x.npz",
        "--out",
        out,
        "--import",
        trained["jobs"] / "prelu.py",
    )
    assert predicted.returncode == 0, predicted.stderr
    assert len(out.read_text().splitlines()) == 1 + 7


def test_resume_finds_the_layer_from_another_directory(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained["run"], copy)
    result = horn("run", "--resume", copy, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout


# ============================================================ the job's modules
def write_job(directory, body, name="job.toml"):
    path = directory / name
    path.write_text(body)
    return path


LAYERS_BODY = """[model]
imports = {imports}
layers = [{{ type = "dense", units = 8 }}, {{ type = "{kind}" }}, {{ type = "dense", units = 3 }}]
"""


def test_job_needs_its_module_named(tmp_path):
    (tmp_path / "prelu.py").write_text(PRELU)
    path = write_job(tmp_path, LAYERS_BODY.format(imports="[]", kind="prelu"))
    with pytest.raises(HornError, match=r"unknown layer type 'prelu'.*model\.imports"):
        load_job(path)
    path = write_job(tmp_path, LAYERS_BODY.format(imports="[]", kind="prelu:PReLU"))
    with pytest.raises(HornError, match=r"model\.layers\[1\].*'prelu'.*not imported"):
        load_job(path)
    assert "prelu" not in sys.modules
    path = write_job(tmp_path, LAYERS_BODY.format(imports='["prelu"]', kind="prelu"))
    assert load_job(path).model.layers[1] == {"type": "prelu"}
    assert Path(sys.modules["prelu"].__file__) == tmp_path / "prelu.py"


CLAIMS = """
import horn


@horn.register_layer({name!r})
class Claimant(horn.Layer):
    partition_role = "through"

    def forward(self, x, train):
        return x

    def backward(self, dy):
        return dy
"""


@pytest.mark.parametrize("taken", ["relu", "dense", "prelu"])
def test_a_layer_name_names_one_class(tmp_path, taken):
    """A built-in's or another module's name is refused on one line naming both classes,
    whichever module was imported first; the same class path again replaces itself."""
    (tmp_path / "prelu.py").write_text(PRELU)
    (tmp_path / "claims.py").write_text(CLAIMS.format(name=taken))
    path = write_job(tmp_path, LAYERS_BODY.format(imports='["prelu", "claims"]', kind="relu"))
    owner = {
        "relu": "horn.layers.activations:ReLU",
        "dense": "horn.layers.dense:Dense",
        "prelu": "prelu:PReLU",
    }[taken]
    with pytest.raises(HornError) as refused:
        load_job(path)
    message = str(refused.value)
    assert "model.imports[1]: importing 'claims'" in message and "\n" not in message
    assert f"register_layer({taken!r}) for claims:Claimant: the name is taken by {owner}" in message
    assert registry.registered()[taken].__module__ != "claims"
    (tmp_path / "again.py").write_text(CLAIMS.format(name="claimed_once"))
    registry.import_modules(["again"], tmp_path)
    first = sys.modules.pop("again").Claimant
    registry.import_modules(["again"], tmp_path)  # the same path again: a re-run module
    second = sys.modules["again"].Claimant
    assert first is not second and registry.registered()["claimed_once"] is second


def test_job_directory_is_importable_only_for_named_modules(tmp_path):
    tripwire = tmp_path / "TRIPWIRE"
    (tmp_path / "sneaky.py").write_text(hostile_source(tripwire))
    (tmp_path / "uses_sneaky.py").write_text("import sneaky\n")
    path = write_job(tmp_path, LAYERS_BODY.format(imports="[]", kind="sneaky:Evil"))
    with pytest.raises(HornError, match="'sneaky'"):
        load_job(path)
    path = write_job(tmp_path, LAYERS_BODY.format(imports='["uses_sneaky"]', kind="relu"))
    with pytest.raises(HornError, match=r"importing 'uses_sneaky'.*No module named 'sneaky'"):
        load_job(path)
    assert not tripwire.exists() and "sneaky" not in sys.modules
    assert "uses_sneaky" not in sys.modules  # a failed import leaves nothing half-made
    path = write_job(
        tmp_path, LAYERS_BODY.format(imports='["sneaky", "uses_sneaky"]', kind="sneaky:Evil")
    )
    load_job(path)  # named: imported, as the user asked
    assert tripwire.exists()


def test_a_package_next_to_the_job_and_its_resolved_form(tmp_path):
    package = tmp_path / "mylib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "acts.py").write_text(PRELU.replace('"prelu"', '"mylib_prelu"'))
    path = write_job(tmp_path, LAYERS_BODY.format(imports='["mylib.acts"]', kind="mylib_prelu"))
    job = load_job(path)
    write_resolved(job, tmp_path / "job.json")
    resolved = json.loads((tmp_path / "job.json").read_text())
    assert resolved["model"]["imports"] == [str(package), "mylib.acts"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(tmp_path / "job.json", elsewhere / "job.json")
    result = horn(
        "run",
        elsewhere / "job.json",
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "model.layers.2.units=10",
        "--set",
        f"log.dir='{tmp_path / 'r'}'",
        "--set",
        "log.plot=false",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "entry, fragment",
    [
        (3, "expected a module name or a path"),
        ("", "expected a module name or a path"),
        ("a b", "expected a module name"),
        ("os:system", "expected a module name"),
        ("no_such_module_zz9", "no module 'no_such_module_zz9' found in"),
        ("nope.py", "found nothing (no such file)"),
        ("sub/", "a directory without __init__.py"),
        ("json", "imported already"),
        ("broken", "importing 'broken' from"),
        ("bad-name.py", "'bad-name' is not a module name"),
    ],
)
def test_bad_imports_entries_are_one_line_naming_the_key(tmp_path, entry, fragment):
    (tmp_path / "sub").mkdir()
    (tmp_path / "json.py").write_text("")  # would shadow the json everyone has imported
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "bad-name.py").write_text("")
    path = write_job(tmp_path, LAYERS_BODY.format(imports=json.dumps([entry]), kind="relu"))
    with pytest.raises(HornError) as info:
        load_job(path)
    message = str(info.value)
    assert f"{path}:2: model.imports[0]" in message and fragment in message, message
    assert "\n" not in message
    assert "broken" not in sys.modules


def test_broken_module_keeps_its_traceback_for_debug(tmp_path, capsys, monkeypatch):
    from horn import abort

    monkeypatch.setitem(abort._context, "debug", False)  # --debug sets it for the process
    (tmp_path / "broken.py").write_text("def f():\n    return 1 / 0\nf()\n")
    path = write_job(tmp_path, LAYERS_BODY.format(imports='["broken"]', kind="relu"))
    code, _, err = cli(capsys, "--debug", "validate", path)
    assert code == 2 and "ZeroDivisionError" in err and "broken.py" in err and "Traceback" in err


# ============================================================ files never import
def small_model(in_features=5, classes=3):
    return Model(
        [Dense(4, "relu"), Dense(classes)], SoftmaxCrossEntropy(), in_features, "numpy", seed=1
    )


def rewrite_header(path, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(bytes(arrays["__header__"]))
    change(header)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


def naming_hostile(where):
    def change(header):
        spec = header["spec"]
        if where == "layer":
            spec["layers"][0]["type"] = "hostile_mod:Evil"
        elif where == "loss":
            spec["loss"]["type"] = "hostile_mod:Evil"
        elif where == "classes":
            spec["classes"] = {"dense": "hostile_mod:Evil"}
        elif where == "meta job layer":
            header["meta"]["job"]["model"]["layers"][0]["type"] = "hostile_mod:Evil"

    return change


def model_file(tmp_path, where, kind="model"):
    """A digits-sized model file (with its job in the metadata) naming hostile_mod."""
    model = small_model(64, 10)
    job = load_job(
        write_job(
            tmp_path,
            '[model]\nlayers = [{ type = "dense", units = 4, '
            'activation = "relu" }, { type = "dense", units = 10 }]\n',
        )
    )
    meta = {"job": job.to_dict(), "classes": 10}
    path = tmp_path / f"{kind}.npz"
    (Ensemble([model, small_model(64, 10)]) if kind == "ensemble" else model).save(path, meta)
    rewrite_header(path, naming_hostile(where))
    return path


@pytest.mark.parametrize("kind", ["model", "ensemble"])
@pytest.mark.parametrize("where", ["layer", "loss", "classes", "meta job layer"])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_model_file_naming_a_module_never_imports_it(
    tmp_path, capsys, hostile, kind, where, command
):
    path = model_file(tmp_path, where, kind)
    np.save(tmp_path / "x.npy", np.ones((2, 64)))
    args = [path] if command == "eval" else [path, tmp_path / "x.npy", "--out", tmp_path / "p.csv"]
    code, _, err = cli(capsys, command, *args)
    if command == "predict" and where == "meta job layer":
        assert code == 0, err  # predict never reads the job: nothing to refuse
    else:
        one_line_error(code, err, "'hostile_mod'", "--import hostile_mod")
    assert not hostile["tripwire"].exists() and "hostile_mod" not in sys.modules


def test_modules_listed_in_a_model_files_job_are_not_imported(tmp_path, capsys, hostile):
    path = model_file(tmp_path, "none")
    rewrite_header(path, lambda h: h["meta"]["job"]["model"].update(imports=["hostile_mod"]))
    code, out, err = cli(capsys, "eval", path)
    assert code == 0 and out.startswith("test accuracy "), err
    assert not hostile["tripwire"].exists() and "hostile_mod" not in sys.modules


def test_the_tripwire_fires_when_the_user_names_the_module(tmp_path, capsys, hostile):
    """The control: the same files load once the user names the module."""
    path = model_file(tmp_path, "layer")
    code, out, err = cli(capsys, "eval", path, "--import", "hostile_mod")
    assert hostile["tripwire"].exists()
    assert "hostile_mod" in sys.modules and "not imported" not in err


@pytest.mark.parametrize("where", ["layers", "loss"])
def test_resume_of_a_job_json_naming_a_module_never_imports_it(tmp_path, hostile, where):
    run = tmp_path / "run"
    run.mkdir()
    write_resolved(
        load_job(
            write_job(
                tmp_path,
                '[model]\nlayers = [{ type = "dense", units = 10 }]\n[checkpoint]\nevery = 1\n',
            )
        ),
        run / "job.json",
    )
    job = json.loads((run / "job.json").read_text())
    if where == "layers":
        job["model"]["layers"].insert(0, {"type": "hostile_mod:Evil"})
    else:
        job["model"]["loss"] = {"type": "hostile_mod:Evil"}
    (run / "job.json").write_text(json.dumps(job))
    result = horn("run", "--resume", run, "--quiet", env=hostile["env"])
    one_line_error(result.returncode, result.stderr, "job.json", "'hostile_mod'", "not imported")
    assert not hostile["tripwire"].exists()


# ============================================================ eval --data FILE
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits")
    result = horn(
        "run",
        ROOT / "jobs/digits.toml",
        "--quiet",
        "--set",
        "train.epochs=2",
        "--set",
        f"log.dir='{base}'",
        "--set",
        "log.plot=false",
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1].split("run directory ")[1])


def idx_bytes(array):
    return (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def expected_accuracy(run_dir, x, y):
    from horn.cli import _scaler

    model, meta = load_predictor(run_dir / "model.npz")
    return f"{model.accuracy(_scaler(meta).apply(x), y):.4f}"


def labelled_files(tmp_path, x, y):
    """The same samples as every labelled format eval takes: (arguments, name)."""
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savetxt(tmp_path / "last.csv", np.column_stack([x, y]), delimiter=",", fmt="%g")
    np.savetxt(
        tmp_path / "first.csv",
        np.column_stack([y, x]),
        delimiter=",",
        fmt="%g",
        header=",".join(["label"] + [f"f{i}" for i in range(x.shape[1])]),
        comments="",
    )
    (tmp_path / "images-idx3-ubyte").write_bytes(idx_bytes(x.reshape(-1, 8, 8)))
    (tmp_path / "labels-idx1-ubyte").write_bytes(idx_bytes(y))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return [
        (["--data", tmp_path / "d.npz"], "d.npz"),
        (["--data", tmp_path / "last.csv"], "last.csv"),
        (["--data", tmp_path / "first.csv", "--label-column", "0"], "first.csv"),
        (
            ["--data", tmp_path / "images-idx3-ubyte", "--labels", tmp_path / "labels-idx1-ubyte"],
            "images-idx3-ubyte",
        ),
        (["--data", tmp_path / "x.npy", "--labels", tmp_path / "y.npy"], "x.npy"),
    ]


def test_eval_on_a_users_own_labelled_files(digits_run, tmp_path, capsys):
    x, y = load_digits(return_X_y=True)
    x, y = x[::3], y[::3]  # a part of it: a file of the user's, not the model's test split
    expected = expected_accuracy(digits_run, x, y)
    assert float(expected) > 0.5  # a trained model: a wrong scaling would show
    for args, name in labelled_files(tmp_path, x, y):
        code, out, err = cli(capsys, "eval", digits_run, *args)
        assert code == 0, err
        assert out.split() == [
            str(tmp_path / name),
            "accuracy",
            expected,
            f"({len(y)}",
            "samples)",
        ], out


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("width", "the model expects 64 features per sample, found 10"),
        ("labels", "expected labels below 10 (the model's classes), found 12"),
        ("idx alone", "needs its labels file named too"),
        ("missing", "found nothing (no such file)"),
        ("directory", "found a directory"),
        ("label count", "expected one label per sample (5), found 4"),
        ("both", "give --split (of the model's own data) or --data FILE, not both"),
        ("labels alone", "give --data too"),
    ],
)
def test_eval_data_errors_are_one_line(digits_run, tmp_path, capsys, case, fragment):
    x = np.ones((5, 64))
    np.savez(tmp_path / "narrow.npz", x=np.ones((5, 10)), y=np.zeros(5))
    np.savez(tmp_path / "labels.npz", x=x, y=np.array([0, 1, 12, 3, 4]))
    (tmp_path / "images").write_bytes(idx_bytes(np.ones((5, 8, 8))))
    (tmp_path / "dir.csv").mkdir()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y4.npy", np.zeros(4, int))
    args = {
        "width": ["--data", tmp_path / "narrow.npz"],
        "labels": ["--data", tmp_path / "labels.npz"],
        "idx alone": ["--data", tmp_path / "images"],
        "missing": ["--data", tmp_path / "gone.npz"],
        "directory": ["--data", tmp_path / "dir.csv"],
        "label count": ["--data", tmp_path / "x.npy", "--labels", tmp_path / "y4.npy"],
        "both": ["--data", tmp_path / "labels.npz", "--split", "val"],
        "labels alone": ["--labels", tmp_path / "y4.npy"],
    }[case]
    code, _, err = cli(capsys, "eval", digits_run, *args)
    one_line_error(code, err, fragment)


# ============================================================ path errors in eval/predict
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing directory", "expected an existing directory"),
        ("onto a directory", "found a directory"),
        ("under a file", "found a regular file"),
    ],
)
def test_predict_out_path_errors_are_one_line_and_create_nothing(
    digits_run, tmp_path, capsys, case, fragment
):
    np.save(tmp_path / "x.npy", np.ones((3, 64)))
    (tmp_path / "taken").mkdir()
    (tmp_path / "plain").write_text("")
    out = {
        "missing directory": tmp_path / "new" / "deeper" / "p.csv",
        "onto a directory": tmp_path / "taken",
        "under a file": tmp_path / "plain" / "p.csv",
    }[case]
    code, _, err = cli(capsys, "predict", digits_run, tmp_path / "x.npy", "--out", out)
    one_line_error(code, err, f"--out {out}", fragment)
    assert not (tmp_path / "new").exists() and list((tmp_path / "taken").iterdir()) == []


def test_predict_writes_into_an_existing_directory(digits_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((3, 64)))
    code, out, err = cli(
        capsys, "predict", digits_run, tmp_path / "x.npy", "--out", tmp_path / "p.csv"
    )
    assert code == 0, err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("no model", "expected an .npz file, found nothing"),
        ("run without model", "found a directory without one"),
        ("missing import", "--import[0]: no module 'not_a_module_zz' found in"),
        ("missing import file", "--import[0]: expected a .py file or a package directory"),
    ],
)
def test_eval_and_predict_path_errors_are_one_line(
    digits_run, tmp_path, capsys, command, case, fragment
):
    np.save(tmp_path / "x.npy", np.ones((3, 64)))
    (tmp_path / "empty_run").mkdir()
    args = {
        "no model": [tmp_path / "gone.npz"],
        "run without model": [tmp_path / "empty_run"],
        "missing import": [digits_run, "--import", "not_a_module_zz"],
        "missing import file": [digits_run, "--import", tmp_path / "gone.py"],
    }[case]
    if command == "predict":
        args = [args[0], tmp_path / "x.npy", "--out", tmp_path / "p.csv", *args[1:]]
    code, _, err = cli(capsys, command, *args)
    one_line_error(code, err, fragment)


def test_predict_input_missing_is_one_line(digits_run, tmp_path, capsys):
    code, _, err = cli(
        capsys, "predict", digits_run, tmp_path / "gone.csv", "--out", tmp_path / "p.csv"
    )
    one_line_error(code, err, "gone.csv", "no such file")


# ============================================================ the README, followed literally
def test_readme_custom_layer_section_works_as_written(tmp_path):
    """The README's layer saved as prelu.py next to the README's job snippet: it trains,
    and eval finds the layer again once the module is named."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a layer") :]
    layer = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "PReLU" in b)
    job = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    (tmp_path / "prelu.py").write_text(layer)
    (tmp_path / "job.toml").write_text(job)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = horn(
        "run",
        tmp_path / "job.toml",
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        f"log.dir='{tmp_path / 'runs'}'",
        "--set",
        "log.plot=false",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr
    run = result.stdout.strip().splitlines()[-1].split("run directory ")[1]
    refused = horn("eval", run, cwd=tmp_path)
    one_line_error(
        refused.returncode,
        refused.stderr,
        "layer type 'prelu' (class 'prelu:PReLU') is in module 'prelu', which is not imported",
    )
    named = horn("eval", run, "--import", "prelu", cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert named.stdout.splitlines()[-1].startswith("test accuracy ")  # after check_layer's print


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda h: h.update(weights=[]), "weights to be a non-empty list of positive numbers"),
        (lambda h: h.update(weights="ab"), "found str ab"),
        (lambda h: h.update(weights=[1.0, -1.0]), "positive numbers"),
        (lambda h: h.update(weights=[True, 1]), "positive numbers"),
        (lambda h: h.update(meta=[1]), "meta to be a table, found list"),
    ],
)
def test_malformed_ensemble_headers_are_one_line(tmp_path, capsys, change, fragment):
    path = tmp_path / "ensemble.npz"
    Ensemble([small_model(64, 10), small_model(64, 10)]).save(path, {})
    rewrite_header(path, change)
    code, _, err = cli(capsys, "eval", path, "--data", tmp_path / "unused.npz")
    one_line_error(code, err, str(path), fragment)
