"""The ``horn`` command: run, launch, validate, eval, predict, info, hosts check, cluster."""

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

from horn.abort import install_abort_hook, run_guarded
from horn.cli_parser import HornArgumentParser
from horn.errors import HornError
from horn.options import print_layer_table
from horn.paths import output_file
from horn.shipped_jobs import add_jobs_command, resolve_job


def _load(args):
    from horn.jobs import load_job

    return load_job(resolve_job(args.job), args.set or [])


_LAYOUT_KEYS = ("parallel.groups=", "parallel.workers=")


def cmd_run(args):
    from horn.resume import install_preemption_handlers

    install_preemption_handlers()  # before the slow start-up: see horn.resume.Preemption
    from horn.parallel import create_peer, launched_by_mpirun
    from horn.runner import check_single_process
    from horn.training_run import run_job

    if args.resume:
        layout_only = all(s.startswith(_LAYOUT_KEYS) for s in args.set or [])
        if args.job or not layout_only:
            raise HornError(
                "--resume RUN_DIR continues a run with its own resolved job; give "
                "no JOB, and --set only parallel.groups/parallel.workers (a new "
                "layout, e.g. on the hosts that are left)"
            )
        from horn.jobs import load_job

        job = load_job(Path(args.resume) / "job.json", args.set or [])
        if not launched_by_mpirun():  # before prepare's check, which would drop --resume
            check_single_process(job, resume=args.resume)
    elif not args.job:
        raise HornError("horn run: give a JOB file, or --resume RUN_DIR")
    else:
        job = _load(args)
    result = run_job(
        job,
        progress=not args.quiet,
        peer=create_peer(job),
        run_dir=args.resume,
        resume=bool(args.resume),
    )
    if result is None:
        return 0
    if result.get("preempted"):
        print(
            f"horn: stopped at step {result['step']} with a checkpoint; continue with: "
            f"horn run --resume {result['run_dir']}"
        )
    else:
        print(final_line(result))
    return 0


def final_line(result):
    """The last line of ``horn run``: test accuracy, the best epoch, the run directory."""
    best = ""
    if result.get("best_epoch") is not None:
        stopped = result.get("stopped_early_at_epoch")
        best = (
            f"  best val {result['best_val_accuracy']:.4f} at epoch {result['best_epoch']} "
            f"(test {result['best_test_accuracy']:.4f}, best.npz)"
            + (f", stopped early after epoch {stopped}" if stopped else "")
        )
    return f"test accuracy {result['test_accuracy']:.4f}{best}  run directory {result['run_dir']}"


_MPIRUNS = ("mpirun", "mpiexec", "prterun", "orterun")


def cmd_launch(args):
    """mpirun plus the clean-finish check of horn.launch (mpirun can exit 0 after a lost
    host): ``horn launch --hostfile FILE -n N JOB [--set ...]`` builds the mpirun line,
    ``horn launch mpirun ARGS...`` takes the user's own."""
    from horn.launch import Launch, job_argv, shown

    own = args.mpirun[:1] and Path(args.mpirun[0]).name in _MPIRUNS
    if own and (args.hostfile or args.n is not None):
        raise HornError(
            "horn launch: give either --hostfile/-n and a JOB, or an mpirun command line, not both"
        )
    if own:
        launch = Launch()
        return launch.run([args.mpirun[0], *launch.options, *args.mpirun[1:]])
    if not args.hostfile or args.n is None:
        found = args.mpirun[0] if args.mpirun else "nothing"
        raise HornError(
            f"horn launch: expected --hostfile FILE -n N JOB [--set ...], or an "
            f"mpirun command (mpirun ARGS...), found {found}"
        )
    run_args = build_parser().parse_args(["run", *args.mpirun])
    if not run_args.resume:
        _load(run_args)  # a bad job or --set fails here, before mpirun starts
    argv, env = job_argv(args.hostfile, args.n, args.mpirun, args.oversubscribe)
    print(f"horn: {shown(argv, env)}", flush=True)
    return Launch().run(argv, env)


def cmd_validate(args):
    """Every check ``horn run`` makes before training (horn.runner.prepare), no training."""
    from horn.runner import prepare, rehearse

    job = _load(args)
    prepared = prepare(job, single_process_rule=False)
    stepped = rehearse(prepared)
    for name, finding in prepared.checks():
        print(f"  {name + ':':<10} {finding}")
    print(f"  {'step:':<10} one training step and one evaluation of 2 samples through {stepped}")
    print(f"{args.job}: ok ({job.name}: {job.source})")
    return 0


def _model_path(path):
    """MODEL as given: a model .npz, or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.npz").is_file():
            raise HornError(
                f"{path}: expected a model .npz or a run directory with model.npz, "
                f"found a directory without one (a run saves it when it finishes)"
            )
        return path / "model.npz"
    return path


def add_import_option(parser, what):
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help=f"import the module with {what}: a name (looked up in the current "
        "directory, then installed) or a .py file (repeatable)",
    )


def cmd_layers(args):
    """``horn layers``: the built-ins and the layers of the modules named with --import."""
    from horn.registry import import_modules

    import_modules(args.imports or [], os.getcwd(), "--import")
    return print_layer_table()


def _load_model(args):
    """A model, or an ensemble of members (a run with parallel.ensemble.final = "ensemble").
    Its layers may come only from built-ins and the modules named with --import: the file
    itself never makes horn import anything."""
    from horn.ensemble_model import load_predictor
    from horn.registry import import_modules

    import_modules(args.imports or [], os.getcwd(), "--import")
    return load_predictor(_model_path(args.model), args.backend)


def _scaler(meta):
    from horn.data import Scaler

    s = meta.get("scaler") or {"kind": "none", "offset": 0.0, "scale": 1.0}
    try:
        return Scaler(
            s["kind"], np.asarray(s["offset"], np.float32), np.asarray(s["scale"], np.float32)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HornError(f"model file: malformed scaler in its metadata ({exc!r})") from None


def _check_width(model, x, where):
    if x.shape[1] != model.input_size:
        raise HornError(
            f"{where}: the model expects {model.input_size} features per sample, found {x.shape[1]}"
        )


def cmd_eval(args):
    if args.data is None and (args.labels or args.label_column is not None):
        raise HornError(
            "horn eval: --labels and --label-column describe a --data FILE; give --data too"
        )
    if args.data is not None and args.split is not None:
        raise HornError(
            "horn eval: give --split (of the model's own data) or --data FILE, not both"
        )
    model, meta = _load_model(args)
    if args.data is not None:
        return _eval_file(args, model, meta)
    from horn.data import load_dataset
    from horn.jobs import job_from_dict

    doc = meta.get("job")
    if not isinstance(doc, dict):
        raise HornError(
            f"{args.model}: the model file names no job, so its data is unknown; "
            f"evaluate it on a labelled file with --data FILE"
        )
    if isinstance(doc.get("model"), dict):  # its modules come from --import, never the file
        doc = {**doc, "model": {k: v for k, v in doc["model"].items() if k != "imports"}}
    job = job_from_dict(doc, str(_model_path(args.model)))
    data = load_dataset(job.data, base_dir=os.getcwd())
    if data.features != model.input_size:
        raise HornError(
            f"{args.model}: the model expects {model.input_size} features, the data "
            f"({data.name}) has {data.features}"
        )
    split = args.split or "test"
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    print(f"{split} accuracy {model.accuracy(x, y):.4f} ({len(y)} samples, {data.name})")
    return 0


def _eval_file(args, model, meta):
    """Accuracy on the user's own labelled file, scaled as the model's training data was."""
    from horn.data import load_labelled

    column = -1 if args.label_column is None else args.label_column
    x, y = load_labelled(args.data, args.labels, column, expect=model.in_features)
    _check_width(model, x, args.data)
    classes = model.out_features
    if isinstance(classes, int) and y.max() >= classes:
        raise HornError(
            f"{args.labels or args.data}: expected labels below {classes} (the "
            f"model's classes), found {y.max()}"
        )
    accuracy = model.accuracy(_scaler(meta).apply(x, args.data), y)
    print(f"{args.data} accuracy {accuracy:.4f} ({len(y)} samples)")
    return 0


def cmd_predict(args):
    from horn.data import load_features

    out = output_file(args.out, "predictions.csv")
    model, meta = _load_model(args)
    x = load_features(args.input, expect=model.in_features)
    _check_width(model, x, args.input)
    probs = model.predict(_scaler(meta).apply(x, args.input))
    header = "label," + ",".join(f"p{i}" for i in range(probs.shape[1]))
    rows = np.column_stack([probs.argmax(axis=1), probs])
    try:
        np.savetxt(
            out,
            rows,
            delimiter=",",
            header=header,
            comments="",
            fmt=["%d"] + ["%.6f"] * probs.shape[1],
        )
    except OSError as exc:
        raise HornError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {len(probs)} predictions to {out}")
    return 0


def cmd_info(args):
    import numba
    from threadpoolctl import threadpool_info

    from horn import __version__
    from horn.backends import available_backends

    print(
        f"horn {__version__}  python {platform.python_version()}  numpy {np.__version__}  "
        f"numba {numba.__version__}"
    )
    print(
        f"backends available: {', '.join(available_backends())} (auto = "
        f"{'numba' if 'numba' in available_backends() else 'numpy'})"
    )
    for pool in threadpool_info():
        print(
            f"{pool['user_api']}: {pool['internal_api']} {pool.get('version')} "
            f"threads={pool['num_threads']} ({pool.get('architecture', '')})"
        )
    print(f"cpu cores: {os.cpu_count()}  numba threads: {numba.config.NUMBA_NUM_THREADS}")
    try:
        import mpi4py
        from mpi4py import MPI

        print(f"mpi4py {mpi4py.__version__}: {MPI.Get_library_version().splitlines()[0]}")
    except ImportError as exc:
        print(f"mpi4py: not available ({exc})")
    return 0


def cmd_hosts_check(args):
    from horn.hosts import check_hostfile

    hosts, total = check_hostfile(args.file)
    for name, slots in hosts:
        print(f"{name}  slots={slots}")
    print(f"{args.file}: ok, {len(hosts)} host(s), {total} slot(s) in total")
    return 0


def build_parser():
    from horn import __version__

    parser = HornArgumentParser(prog="horn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"horn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def job_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "job",
            nargs="?" if name == "run" else None,
            help="job file (.toml, or a run's resolved job.json), or the name "
            "of a job shipped with horn (see horn jobs)",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a job key, e.g. --set train.lr=0.05 (repeatable)",
        )
        p.set_defaults(func=func)
        return p

    run = job_command("run", cmd_run, "train a job")
    run.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest valid checkpoint"
    )
    launch = sub.add_parser(
        "launch",
        help="run a job on the hosts of a hostfile (or your own "
        "mpirun line); fail unless every rank finished "
        "cleanly (names lost ranks and hosts)",
    )
    launch.add_argument("--hostfile", metavar="FILE", help="hosts to run on (checked first)")
    launch.add_argument("-n", type=int, metavar="N", help="number of ranks")
    launch.add_argument(
        "--oversubscribe", action="store_true", help="allow more ranks than the hostfile's slots"
    )
    launch.add_argument(
        "mpirun",
        nargs=argparse.REMAINDER,
        help="JOB [--set ...] (what horn run takes), or mpirun and its arguments",
    )
    launch.set_defaults(func=cmd_launch)
    job_command("validate", cmd_validate, "check a job file without training")
    for name, func, help_text in (
        ("eval", cmd_eval, "accuracy of a saved model"),
        ("predict", cmd_predict, "predictions for an input file"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="model .npz or run directory")
        p.add_argument("--backend", default="numpy", choices=("numpy", "numba", "cupy"))
        add_import_option(p, "the model's own layers; a model file never imports anything itself")
        p.set_defaults(func=func)
        if name == "eval":
            p.add_argument(
                "--split",
                choices=("test", "val", "train"),
                help="a split of the data the model was trained on (default test)",
            )
            p.add_argument(
                "--data",
                metavar="FILE",
                help="your own labelled file instead: .npz (x, y), .csv (label "
                "column), or features (.npy, IDX images, ...) with --labels",
            )
            p.add_argument(
                "--labels",
                metavar="FILE",
                help="labels for --data: IDX, .npy, .npz or a one-column .csv",
            )
            p.add_argument(
                "--label-column",
                type=int,
                metavar="N",
                help="the label column of a --data .csv (default -1, the last)",
            )
        else:
            p.add_argument("input", help="features: .npz/.npy/.csv/IDX")
            p.add_argument(
                "--out", default="predictions.csv", help="CSV to write, in an existing directory"
            )
    sub.add_parser("info", help="versions, backends, BLAS, threads, MPI").set_defaults(
        func=cmd_info
    )
    layers = sub.add_parser("layers", help="layers and their options")
    add_import_option(layers, "your own layers, listed with the built-ins")
    layers.set_defaults(func=cmd_layers)
    hosts = sub.add_parser("hosts", help="hostfile tools").add_subparsers(
        dest="hosts_command", required=True
    )
    check = hosts.add_parser("check", help="validate a hostfile")
    check.add_argument("file")
    check.set_defaults(func=cmd_hosts_check)
    from horn.cluster_cli import add_cluster_commands

    add_cluster_commands(sub)
    add_jobs_command(sub)
    __import__("horn.compare").compare.add_compare_command(sub)
    return parser


def main(argv=None):
    install_abort_hook()
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), debug=getattr(args, "debug", False)) or 0


if __name__ == "__main__":
    sys.exit(main())
