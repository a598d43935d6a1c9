"""Name -> layer class, and the user modules that hold layer classes.

A job names a built-in by its registered name (``"dense"``), a user's layer by the
name its module registers, or any layer class as ``"package.module:ClassName"``.
horn imports a module only when the user names it: in a job's ``model.imports``,
with ``--import`` on the command line, or under ``horn.layers`` (the built-ins).
Anything a file says (a model file, a checkpoint's job, a run's job.json) can only
point at classes of modules that are already imported, so no file makes horn run
code: a class path into any other module is refused, never imported.
"""

import importlib
import re
import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

from horn.errors import HornError
from horn.paths import expand_home
from horn.suggest import did_you_mean

BUILTIN_PACKAGE = "horn.layers"  # the allow-list: always importable
_LAYERS = {}
_CUSTOM = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
HOW_TO_NAME = (
    "horn imports only the modules you name: list it in the job's model.imports, "
    "or pass --import {0} to horn eval/predict"
)


def register_layer(name):
    """Class decorator: make a layer (or loss) available to job files as ``name``.

    A name names one class: taking a built-in's or another module's name is an error
    (which one a job got would depend on import order). The same class path again (a
    module or notebook cell run twice) replaces the old class."""

    def wrap(cls):
        if not is_builtin(cls):
            importlib.import_module(BUILTIN_PACKAGE)  # built-in names are taken first
        taken = _LAYERS.get(name)
        if taken is not None and _identity(taken) != _identity(cls):
            raise HornError(
                f"register_layer({name!r}) for {_identity(cls)}: the name is taken by "
                f"{_identity(taken)}; register this layer under another name"
            )
        _LAYERS[name] = cls
        cls.type_name = name
        return cls

    return wrap


def _identity(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


def registered():
    importlib.import_module(BUILTIN_PACKAGE)  # the built-ins register themselves on import
    return dict(_LAYERS)


def class_path(cls):
    """``"module:Class"``, what finds ``cls`` again in another process (its module
    imported); None for a class no import can reach (a script's, a function's local)."""
    if cls.__module__ == "__main__" or not re.fullmatch(r"[A-Za-z_]\w*", cls.__qualname__):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def is_builtin(cls):
    return cls.__module__ == BUILTIN_PACKAGE or cls.__module__.startswith(BUILTIN_PACKAGE + ".")


def resolve(type_name, where="layer", classes=None):
    """The class for a layer ``type``; a clear error for anything unknown.

    ``classes`` (a saved model spec's) maps registered names to the class paths they
    had when the model was saved, so a user's layer is found again by its module.
    """
    if not isinstance(type_name, str):
        raise HornError(f"{where}: expected a layer type name (string), found {type_name!r}")
    if ":" in type_name:
        return _class_at(type_name, where, repr(type_name))
    if classes and type_name in classes:
        path = classes[type_name]
        cls = _class_at(path, where, f"layer type {type_name!r} (class {path!r})")
        if cls.type_name != type_name:
            raise HornError(
                f"{where}: class {path!r} is registered as {cls.type_name!r}, the "
                f"model was saved with it registered as {type_name!r}"
            )
        return cls
    layers = registered()
    if type_name not in layers:
        raise HornError(
            f"{where}: unknown layer type {type_name!r}{did_you_mean(type_name, layers)}; known: "
            f"{', '.join(sorted(layers))} (a layer of your own is known once its "
            f"module is imported: model.imports in a job, --import for eval/predict)"
        )
    return layers[type_name]


def _class_at(path, where, shown):
    """The horn.Layer subclass at ``module:Class``; the module must be imported already
    or be a built-in one: a path from a file never imports anything else."""
    from horn.layer import Layer

    if not isinstance(path, str) or not _CUSTOM.fullmatch(path):  # match() would let "\n" in
        raise HornError(
            f"{where}: custom layers are named 'package.module:ClassName', found {path!r}"
        )
    module_name, cls_name = path.split(":")
    module = sys.modules.get(module_name)
    if module is None:
        if not (module_name == BUILTIN_PACKAGE or module_name.startswith(BUILTIN_PACKAGE + ".")):
            raise HornError(
                f"{where}: {shown} is in module {module_name!r}, which is not "
                f"imported; {HOW_TO_NAME.format(module_name)}"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise HornError(f"{where}: cannot import {shown}: {exc}") from None
    cls = vars(module).get(cls_name)  # not getattr: a module's __getattr__ may import
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        found = "nothing" if cls is None else type(cls).__name__
        raise HornError(
            f"{where}: {shown} is not a horn.Layer subclass (module "
            f"{module_name!r} has {found} named {cls_name!r})"
        )
    return cls


# ---- the modules a user names ------------------------------------------------------
def import_modules(entries, base_dir=None, where="model.imports"):
    """Import the modules a user named, in order; returns their module names.

    An entry is a module name (``"prelu"``, ``"mylib.layers"``), looked up in
    ``base_dir`` (the job file's directory, or the current one for ``--import``)
    first and then on the installed path; or a path to a ``.py`` file or a package
    directory (relative to ``base_dir``). Only the named modules come from
    ``base_dir``: it is never put on ``sys.path``.
    """
    if not isinstance(entries, (list, tuple)):
        raise HornError(f"{where}: expected a list of module names, found {entries!r}")
    return [_import_entry(entry, base_dir, f"{where}[{i}]") for i, entry in enumerate(entries)]


def is_path_entry(entry):
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def located(entry, base_dir):
    """How ``entry`` is found from anywhere: the absolute path of a module taken from
    ``base_dir`` (then the package's submodule by name), else the entry itself. A run's
    resolved job.json records these, so ``--resume`` finds the same files."""
    if is_path_entry(entry):
        return [str(_entry_path(entry, base_dir, "model.imports"))]
    top = entry.split(".")[0]
    spec = _find_in(top, base_dir)
    if spec is None:
        return [entry]
    origin = Path(spec.origin)
    return [str(origin.parent if spec.submodule_search_locations else origin)] + (
        [entry] if "." in entry else []
    )


def _import_entry(entry, base_dir, where):
    if not isinstance(entry, str) or not entry:
        raise HornError(f"{where}: expected a module name or a path to a .py file, found {entry!r}")
    if is_path_entry(entry):
        try:
            path = _entry_path(entry, base_dir, where)
            spec = _path_spec(path, where)
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a loop
            raise HornError(f"{where}: cannot use {entry!r} as a path: {exc}") from None
        _load(spec.name, spec, where)
        return spec.name
    if not _MODULE.fullmatch(entry):
        raise HornError(
            f"{where}: expected a module name (letters, digits, '_' and dots) or a "
            f"path to a .py file, found {entry!r}"
        )
    top = entry.split(".")[0]
    spec = _find_in(top, base_dir)
    if spec is not None:
        _load(top, spec, where)
    try:
        return importlib.import_module(entry).__name__
    except ModuleNotFoundError as exc:
        if exc.name and (entry == exc.name or entry.startswith(exc.name + ".")):
            here = f" in {base_dir} nor" if base_dir else ""
            raise HornError(
                f"{where}: no module {entry!r} found{here} on the installed path"
            ) from None
        raise HornError(f"{where}: importing {entry!r} failed: {_reason(exc)}") from exc
    except (Exception, SystemExit) as exc:  # the user's module: any failure is theirs, on one line
        raise HornError(f"{where}: importing {entry!r} failed: {_reason(exc)}") from exc


def _entry_path(entry, base_dir, where):
    path = Path(expand_home(entry, where))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve()


def _path_spec(path, where):
    """The import spec of a .py file or a package directory, named after it."""
    name = path.stem if path.suffix == ".py" else path.name
    if path.is_file() and path.suffix == ".py":
        spec = spec_from_file_location(name, path)
    elif (path / "__init__.py").is_file():
        spec = spec_from_file_location(
            name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        found = (
            "a directory without __init__.py"
            if path.is_dir()
            else "nothing (no such file)"
            if not path.exists()
            else "another kind of file"
        )
        raise HornError(
            f"{where}: expected a .py file or a package directory, found {found} at {path}"
        )
    if not _MODULE.fullmatch(name) or "." in name:
        raise HornError(f"{where}: {path} cannot be imported: {name!r} is not a module name")
    return spec


def _find_in(top, base_dir):
    """The spec of source module or package ``top`` directly in ``base_dir``, else None."""
    if base_dir is None or not Path(base_dir).is_dir():
        return None
    spec = FileFinder(str(base_dir), (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(top)
    return spec if spec is not None and spec.loader is not None else None  # no namespace dirs


def _load(name, spec, where):
    """Execute the module of ``spec`` as ``name``, unless that very file is imported already;
    a different module of the same name is an error, never silently the wrong one."""
    origin = Path(spec.origin).resolve()
    current = sys.modules.get(name)
    if current is not None:
        loaded = getattr(current, "__file__", None)
        if loaded and Path(loaded).resolve() == origin:
            return current
        raise HornError(
            f"{where}: {origin} would be module {name!r}, but a module of that "
            f"name is imported already (from {loaded or 'built-in'}); rename it"
        )
    module = module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if not isinstance(exc, (Exception, SystemExit)):  # Ctrl-C stays an interrupt
            raise
        raise HornError(
            f"{where}: importing {name!r} from {origin} failed: {_reason(exc)}"
        ) from exc
    return module


def _reason(exc):
    if isinstance(exc, HornError):  # horn's own one-line message, as it is
        return str(exc)
    if isinstance(exc, SystemExit):  # never the job's exit code: 0 would read as success
        return f"it called sys.exit({exc.code!r})"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
