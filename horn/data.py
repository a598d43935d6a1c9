"""Data sets: load, validate, split and scale training data; read prediction inputs.

Every source (scikit-learn digits, MNIST-format IDX files, ``.npz``, ``.csv``)
ends in the same checks, so a bad file fails early with a one-line
:class:`HornError` that names the file, what was expected and what was found,
instead of a NaN loss or an index error deep inside training.
"""

import csv
import gzip
import lzma
import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from horn.errors import HornError
from horn.paths import REGULAR, expand_home, found_at

DATASET_NAMES = ("digits", "idx", "fashion_mnist", "mnist", "npz", "csv")
SCALE_KINDS = ("unit", "standard", "none")

# Sources without a fixed test split (digits, npz/csv without test arrays) split
# one off with this seed, so the test set stays the same whatever data.seed is.
TEST_SPLIT_SEED = 0

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_HOMES = {"idx": "fashion-mnist", "fashion_mnist": "fashion-mnist", "mnist": "mnist"}
SYSTEM_DATASETS = Path("/usr/share/datasets")
GET_FASHION_MNIST = (
    "get Fashion-MNIST with `apt-get install dataset-fashion-mnist`, "
    "or set data.path or HORN_DATA to a directory holding the IDX files"
)

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data more than ~1032:1, so a gzip file of n bytes cannot
# hold more than this many times n; a header declaring more is forged.
_GZIP_MAX_RATIO = 1100
_CHUNK = 1 << 20
_STD_FLOOR = 1e-6


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, eq=False)
class Scaler:
    """Feature scaling fitted on the training set, stored with a model so predict
    applies exactly the same transform: ``(x - offset) / scale``."""

    kind: str
    offset: object  # float, or float32 array of shape (features,)
    scale: object  # float, or float32 array of shape (features,)

    @classmethod
    def fit(cls, kind, x):
        """Statistics from ``x`` (training features only, so val/test don't leak in)."""
        if kind == "unit":
            peak = float(np.abs(x).max()) if x.size else 0.0
            return cls("unit", 0.0, peak if peak > 0 else 1.0)
        if kind == "standard":
            mean = x.mean(axis=0, dtype=np.float64)
            std = x.std(axis=0, dtype=np.float64)
            return cls(
                "standard", mean.astype(np.float32), np.maximum(std, _STD_FLOOR).astype(np.float32)
            )
        if kind == "none":
            return cls("none", 0.0, 1.0)
        raise HornError(f"data.scale: expected one of {', '.join(SCALE_KINDS)}, found {kind!r}")

    def apply(self, x, where="scaler"):
        """Scaled float32 C-contiguous copy of the 2-D array ``x`` (``where`` names it in errors)."""
        x = np.asarray(x, dtype=np.float32)
        expected = np.size(self.offset) if np.ndim(self.offset) else None
        if x.ndim != 2 or (expected is not None and x.shape[1] != expected):
            want = f"(n, {expected})" if expected is not None else "(n, features)"
            raise HornError(f"scaler: expected features of shape {want}, found {x.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.ascontiguousarray((x - self.offset) / self.scale, dtype=np.float32)
        if not np.isfinite(out).all():  # finite input, e.g. +-3e38, can overflow x - mean
            raise HornError(
                f"{where}: expected features that stay finite after {self.kind} "
                f"scaling, found NaN or Inf (values beyond float32 range)"
            )
        return out


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test arrays ready for training: float32 (n, features), int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    name: str
    source: str
    scaler: Scaler
    # One sample's shape in the source: (C, H, W) for images (IDX and digits are
    # (1, H, W); an npz ``x`` of (n, H, W) is (1, H, W), (n, C, H, W) stays), else the
    # width. The arrays stay flat rows; a model that takes images reshapes (a view).
    sample_shape: object = None

    @property
    def features(self):
        """Width of one input sample."""
        return self.x_train.shape[1]


@dataclass(frozen=True)
class _Options:
    name: str
    path: object
    root: object
    val_fraction: float
    test_fraction: float
    scale: str
    seed: int
    limit: object
    label_column: int
    where: str = "data.path"  # what named the path, for messages ("--data" for horn eval)


@dataclass(frozen=True)
class _Raw:
    """What a source loader produced, before the common validation."""

    x: np.ndarray
    y: np.ndarray
    x_test: object  # None when the source has no fixed test split
    y_test: object
    source: str
    train_where: str  # names used in error messages
    test_where: str
    row_name: object = None  # i -> "row i" / "line n" for error messages
    # The test features alone and what the training features are called, for the
    # check that both state the same sample shape (see check_sample_shape).
    x_test_where: object = None
    x_name: str = "the training data"


# --------------------------------------------------------------------------- IDX


def read_idx(path):
    """Read one MNIST-format IDX file (gzipped or not, detected by magic bytes).

    Strict by design: every malformation is a HornError naming the file, and the
    declared size is checked against the file size before any payload is read,
    so a forged header cannot make us allocate absurd amounts of memory.
    """
    path = Path(path)
    if not path.is_file():
        raise HornError(f"{path}: expected an IDX file, found {found_at(path)}")
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return _parse_idx(raw, path, size, compressed)
            with gzip.GzipFile(fileobj=raw) as stream:
                return _parse_idx(stream, path, size, compressed)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise HornError(f"{path}: expected valid gzip data, found corrupt gzip ({err})") from None
    except OSError as err:
        raise HornError(f"{path}: cannot read file ({err.strerror or err})") from None


def _parse_idx(stream, path, size, compressed):
    """Header, size checks, then exactly the declared payload and nothing more."""
    head = _read_upto(stream, 4)
    if len(head) < 4:
        raise HornError(f"{path}: expected a 4-byte IDX header, found {len(head)} bytes")
    if head[:2] != b"\0\0":
        raise HornError(f"{path}: expected IDX magic 0x0000 at offset 0, found 0x{head[:2].hex()}")
    dtype = _IDX_DTYPES.get(head[2])
    if dtype is None:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise HornError(
            f"{path}: expected an IDX dtype code ({codes}) at offset 2, found 0x{head[2]:02X}"
        )
    ndim = head[3]
    if ndim == 0:
        raise HornError(f"{path}: expected at least 1 dimension at offset 3, found 0")
    dims_raw = _read_upto(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise HornError(
            f"{path}: expected {ndim} dimension sizes (header of {4 + 4 * ndim} "
            f"bytes), found a truncated header of {4 + len(dims_raw)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", dims_raw)
    if 0 in dims:
        axis = dims.index(0)
        raise HornError(
            f"{path}: expected non-zero dimension sizes, found 0 for axis {axis} "
            f"at offset {4 + 4 * axis}"
        )
    header = 4 + 4 * ndim
    declared = math.prod(dims) * dtype.itemsize
    what = f"{_shape_str(dims)} {dtype.name} ({declared} bytes)"
    if compressed and declared > size * _GZIP_MAX_RATIO:
        raise HornError(
            f"{path}: header declares {what}, more than a {size}-byte gzip file can hold"
        )
    if not compressed and declared != size - header:
        problem = "truncated payload" if declared > size - header else "trailing bytes"
        raise HornError(
            f"{path}: {problem}: header declares {what} but {size - header} bytes "
            f"follow the {header}-byte header"
        )
    payload = _read_upto(stream, declared)
    if len(payload) < declared:
        raise HornError(
            f"{path}: truncated payload: header declares {what} but the data ends "
            f"after {len(payload)} bytes"
        )
    if stream.read(1):
        raise HornError(
            f"{path}: trailing bytes: expected the data to end after {what}, found more"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_upto(stream, n):
    """At most ``n`` bytes, read in chunks so memory grows only with real data."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(n - len(buf), _CHUNK))
        if not chunk:
            break
        buf += chunk
    return buf


def _shape_str(dims):
    """``60000x28x28``, shortened for absurd ranks so messages stay one line."""
    shown = "x".join(str(d) for d in dims[:6])
    return shown + (f"x... ({len(dims)} dims)" if len(dims) > 6 else "")


def _load_idx(opts, base_dir):
    """The four MNIST-format files from the first directory that has them all."""
    directory, files = _find_idx_dir(opts, base_dir)
    paths = [_within_root(f, opts.root, base_dir) for f in files]
    x, y, x_test, y_test = (read_idx(p) for p in paths)
    return _Raw(
        x,
        y,
        x_test,
        y_test,
        source=str(directory),
        train_where=f"{paths[0]} / {paths[1].name}",
        test_where=f"{paths[2]} / {paths[3].name}",
        x_test_where=str(paths[2]),
        x_name=paths[0].name,
    )


def _find_idx_dir(opts, base_dir):
    """Search data.path, then HORN_DATA, then /usr/share/datasets/<name>."""
    home = IDX_HOMES[opts.name]
    if opts.path is not None:
        bases = [_resolve(opts.path, base_dir, opts.where)]
    elif os.environ.get("HORN_DATA"):
        bases = [_resolve(os.environ["HORN_DATA"], None, "HORN_DATA")]
    else:
        bases = []
    candidates = [c for b in bases for c in (b, b / home)] or [SYSTEM_DATASETS / home]
    tried = []
    for directory in candidates:
        files = [_idx_file(directory, name) for name in IDX_FILES]
        if all(files):
            return directory, files
        missing = [f"{n}[.gz]" for n, f in zip(IDX_FILES, files) if f is None]
        reason = f"missing {', '.join(missing)}" if directory.is_dir() else found_at(directory)
        tried.append(f"{directory} ({reason})")
    raise HornError(
        f"{opts.name}: expected a directory with the four IDX files, tried "
        f"{'; '.join(tried)}; {GET_FASHION_MNIST}"
    )


def _idx_file(directory, name):
    """``name`` or ``name.gz`` inside ``directory`` (uncompressed preferred), else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- other sources


def _load_digits(opts, base_dir):
    """scikit-learn's embedded 8x8 digits: no download, good for smoke tests."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _Raw(
        x.reshape(len(x), 8, 8),
        y,
        None,
        None,
        source="sklearn.datasets.load_digits",
        train_where="digits",
        test_where="digits",
    )


def _load_npz(opts, base_dir):
    """Arrays ``x``/``y`` and optionally ``x_test``/``y_test`` from one .npz file."""
    path = _data_file(opts, base_dir)
    arrays = read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise HornError(f"{path}: expected keys 'x' and 'y', found {sorted(arrays) or 'none'}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise HornError(
            f"{path}: expected both 'x_test' and 'y_test' or neither, found {sorted(arrays)}"
        )
    return _Raw(
        arrays["x"],
        arrays["y"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        source=str(path),
        train_where=f"{path} [x/y]",
        test_where=f"{path} [x_test/y_test]",
        x_test_where=f"{path} [x_test]",
        x_name="x",
    )


# What zipfile and its decompressors raise on a damaged archive (RuntimeError: an
# encrypted member; NotImplementedError: an unknown compression method).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,
    NotImplementedError,
)
# What numpy lets escape from a malformed .npy header or payload (its header is parsed
# with ast.literal_eval and tokenize, so SyntaxError, TypeError and friends get through).
_NPY_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    MemoryError,
    SyntaxError,
    tokenize.TokenError,
)


def read_npz(path):
    """All arrays of an .npz archive by name, never unpickling (pickles can run code).

    Each member's .npy header is checked before numpy reads the member: object dtypes
    are refused, and a header declaring more data than the member holds is forged and
    refused before numpy allocates what it declares.
    """
    path = Path(path)
    if not path.is_file():
        raise HornError(f"{path}: expected an .npz file, found {found_at(path)}")
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        found = "a single .npy array" if single else f"no zip archive ({_first_line(err)})"
        raise HornError(f"{path}: expected an .npz archive, found {found}") from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in arrays:
                raise HornError(f"{path}: expected one array named {key!r}, found two")
            arrays[key] = _npz_member(archive, info, f"{path}: array {key!r}")
    return arrays


def _npz_member(archive, info, where):
    """One member of an .npz archive, its header checked before the payload is read."""
    try:
        with archive.open(info) as member:
            if member.read(6) != b"\x93NUMPY":
                found = "a directory" if info.is_dir() else "other data"
                raise HornError(f"{where}: expected a .npy member, found {found}")
            member.seek(0)
            try:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy version {version}")
                # 3.0 differs from 2.0 only in UTF-8 field names: same shape and size
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(member)
            except _NPY_ERRORS as err:
                raise HornError(
                    f"{where}: expected a valid .npy header, found {_first_line(err)}"
                ) from None
            if dtype.hasobject:
                raise HornError(
                    f"{where}: expected numeric arrays, found an object array; "
                    f"refusing pickled data"
                )
            if any(d < 0 for d in shape):
                raise HornError(f"{where}: expected sizes >= 0, found shape {shape}")
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size:
                raise HornError(
                    f"{where}: header declares {_shape_str(shape)} {dtype} "
                    f"({declared} bytes) but the member holds {info.file_size} bytes"
                )
            member.seek(0)
            try:
                return np.lib.format.read_array(member, allow_pickle=False)
            except _NPY_ERRORS as err:
                raise HornError(
                    f"{where}: expected a valid .npy array, found {_first_line(err)}"
                ) from None
    except _ZIP_ERRORS as err:
        raise HornError(
            f"{where}: expected a valid zip member, found {type(err).__name__}: {_first_line(err)}"
        ) from None


def _first_line(err):
    """An exception's message cut to its first line (numpy's run to several)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _load_csv(opts, base_dir):
    """Numeric CSV: one sample per line, the label in ``label_column`` (default last)."""
    path = _data_file(opts, base_dir)
    table, lines = _read_csv(path)
    width = table.shape[1]
    if width < 2 or not -width <= opts.label_column < width:
        raise HornError(
            f"{path}: expected label_column {opts.label_column} plus at least one "
            f"feature column, found {width} columns"
        )
    column = opts.label_column % width
    x = np.delete(table, column, axis=1)
    return _Raw(
        x,
        table[:, column],
        None,
        None,
        source=str(path),
        train_where=str(path),
        test_where=str(path),
        row_name=lambda i: f"line {lines[i]}",
    )


def _read_csv(path):
    """Float64 table plus each row's line number, so errors can point at the line.

    A UTF-8 byte order mark is dropped. The first row is a header, and skipped, only
    when none of its fields is a number: a first row with some numbers is a data row
    with a bad field or a header with numeric names, and guessing either way could drop
    a sample, so it is an error.
    """
    rows, lines, width = [], [], None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for fields in reader:
                if not any(s.strip() for s in fields):
                    continue
                if width is None:
                    width = len(fields)
                    if _is_header(fields, path, reader.line_num):
                        continue
                if len(fields) != width:
                    raise HornError(
                        f"{path}: line {reader.line_num}: expected {width} fields, "
                        f"found {len(fields)}"
                    )
                rows.append(_numbers(fields, path, reader.line_num))
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise HornError(
            f"{path}: expected UTF-8 text, found byte 0x{err.object[err.start]:02x} "
            f"at offset {err.start}"
        ) from None
    except csv.Error as err:
        raise HornError(f"{path}: line {reader.line_num}: expected CSV, found {err}") from None
    except OSError as err:
        raise HornError(f"{path}: cannot read file ({err.strerror or err})") from None
    if not rows:
        raise HornError(f"{path}: expected at least one data row, found none")
    return np.array(rows, dtype=np.float64), lines


def _is_header(fields, path, line):
    """Whether the first row is a header (no field is a number); a mixed row is refused."""
    numeric = [_is_number(s) for s in fields]
    if not any(numeric):
        return True
    if all(numeric):
        return False
    column = numeric.index(False)
    raise HornError(
        f"{path}: line {line}: field {column + 1}: expected a number (a first row with "
        f"{sum(numeric)} of {len(fields)} fields numbers is data, not a header), "
        f"found {fields[column]!r}"
    )


def _is_number(text):
    """Whether ``float()`` accepts ``text`` (which is how a header row is told apart)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numbers(fields, path, line):
    """One CSV row as floats; the first non-number is reported with line and field."""
    try:
        return [float(s) for s in fields]
    except ValueError:
        column = next(i for i, s in enumerate(fields) if not _is_number(s))
        raise HornError(
            f"{path}: line {line}: field {column + 1}: expected a number, found {fields[column]!r}"
        ) from None


_LOADERS = {
    "digits": _load_digits,
    "idx": _load_idx,
    "fashion_mnist": _load_idx,
    "mnist": _load_idx,
    "npz": _load_npz,
    "csv": _load_csv,
}


# --------------------------------------------------------------------------- public entry points


def load_dataset(spec, base_dir=None):
    """Load, validate, split and scale the data set described by ``spec``.

    ``spec`` is the job's ``data`` section: any object (or mapping) with the
    attributes name, path, root, val_fraction, test_fraction, scale, seed,
    limit, label_column; missing or None ones take their defaults. Relative
    paths are resolved against ``base_dir`` (the job file's directory).
    """
    opts = _options(spec)
    raw = _LOADERS[opts.name](opts, base_dir)
    row_name = raw.row_name or (lambda i: f"row {i}")
    shape = sample_shape(np.shape(raw.x))
    x = _features(raw.x, raw.train_where, row_name)
    y = _labels(raw.y, raw.train_where, len(x), row_name)
    if raw.x_test is None:
        test, pool = _split(len(x), opts.test_fraction, TEST_SPLIT_SEED, "test_fraction")
        classes = int(y.max()) + 1
        x_test, y_test, x, y = x[test], y[test], x[pool], y[pool]
    else:
        classes = int(y.max()) + 1
        x_test = _features(raw.x_test, raw.test_where, lambda i: f"row {i}")
        check_sample_shape(
            np.shape(raw.x_test), shape, raw.x_test_where or raw.test_where, f"like {raw.x_name}"
        )
        y_test = _labels(raw.y_test, raw.test_where, len(x_test), lambda i: f"row {i}")
        _check_test(x_test, y_test, x.shape[1], classes, raw.test_where)
    val, train = _split(len(x), opts.val_fraction, opts.seed, "val_fraction")
    train = train[: opts.limit]
    x_train = x[train]
    scaler = Scaler.fit(opts.scale, x_train)
    return Dataset(
        x_train=scaler.apply(x_train, raw.train_where),
        y_train=y[train],
        x_val=scaler.apply(x[val], raw.train_where),
        y_val=y[val],
        x_test=scaler.apply(x_test, raw.test_where),
        y_test=y_test,
        classes=classes,
        name=opts.name,
        source=raw.source,
        scaler=scaler,
        sample_shape=shape,
    )


def sample_shape(array_shape):
    """One sample's shape from a source array's shape (first axis: samples): an image
    (H, W) gets one channel, (C, H, W) stays, anything else is its flat width."""
    rest = tuple(int(d) for d in array_shape[1:])
    if len(rest) == 2:
        return (1, *rest)
    if len(rest) == 3:
        return rest
    return math.prod(rest)


def check_sample_shape(array_shape, expected, where, whose):
    """Refuse a file whose array states a sample shape other than the ``expected`` one.

    ``array_shape`` is the array as stored, first axis samples. Only an array that states
    an image shape (3 or more axes: (n, H, W) is read as (1, H, W), (n, C, H, W) as it
    is) is checked, and only against an image shape (a tuple ``expected``); leading unit
    axes aside, the shapes must be equal, since the same size in another shape (say
    transposed images) would be silently misread. Flat rows (2-D arrays, CSV) are how
    data travels and stay accepted for image models, and images stay accepted for a
    flat (MLP) model, as an MLP on flattened images is common: the width is checked
    elsewhere. ``whose`` says where ``expected`` comes from, e.g. "the model's input".
    """
    found = tuple(int(d) for d in array_shape[1:])
    if len(found) < 2 or not isinstance(expected, tuple):
        return
    if _without_unit_axes(found) != _without_unit_axes(expected):
        raise HornError(f"{where}: expected samples of shape {expected} ({whose}), found {found}")


def _without_unit_axes(shape):
    """``shape`` less its leading size-1 axes: (1, 8, 8) and (8, 8) are the same image."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _stated_features(x, where, row_name, expect):
    """:func:`_features` of ``x``, its stated sample shape checked against ``expect``."""
    shape = np.shape(x)
    x = _features(x, where, row_name)
    check_sample_shape(shape, expect, where, "the model's input")
    return x


def load_features(path, expect=None):
    """Unscaled float32 (n, features) inputs for prediction.

    Accepts .npz (key ``x`` or its only array), .npy, .csv without labels, or
    an IDX file; the first axis is always samples. Apply the model's Scaler next.
    ``expect``, the model's input shape when given, refuses an image-shaped file
    that states another image (see :func:`check_sample_shape`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy", ".csv") and not path.is_file():
        raise HornError(f"{path}: expected an input file, found {found_at(path)}")
    if suffix == ".npz":
        arrays = read_npz(path)
        if "x" not in arrays and len(arrays) != 1:
            raise HornError(
                f"{path}: expected key 'x' or a single array, found {sorted(arrays) or 'no arrays'}"
            )
        key = "x" if "x" in arrays else next(iter(arrays), None)
        shown = key if key is None or key.isidentifier() else repr(key)  # a name may be "\n"
        where = str(path) if key is None else f"{path} [{shown}]"
        return _stated_features(arrays.get(key), where, lambda i: f"row {i}", expect)
    if suffix == ".npy":
        return _stated_features(_read_npy(path), str(path), lambda i: f"row {i}", expect)
    if suffix == ".csv":
        table, lines = _read_csv(path)
        return _features(table, str(path), lambda i: f"line {lines[i]}")
    return _stated_features(read_idx(path), str(path), lambda i: f"row {i}", expect)


def load_labelled(path, labels=None, label_column=-1, expect=None):
    """Unscaled float32 (n, features) inputs and int64 labels from a user's own file
    (``horn eval --data``): an .npz with ``x`` and ``y``, a .csv with the label in
    ``label_column``, or any :func:`load_features` file (IDX images among them) with
    ``labels`` naming its labels file (IDX, .npy, or a one-column .csv). ``expect`` as
    for :func:`load_features`."""
    path = Path(path)
    if labels is not None:
        x = load_features(path, expect)
        return x, _labels(_read_labels(Path(labels)), str(labels), len(x), lambda i: f"row {i}")
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("npz", "csv"):
        raise HornError(
            f"{path}: expected an .npz with x and y or a .csv with a label column; "
            f"a features file (such as IDX images) needs its labels file named too"
        )
    opts = _Options(
        name=kind,
        path=path,
        root=None,
        val_fraction=0.0,
        test_fraction=0.0,
        scale="none",
        seed=0,
        limit=None,
        label_column=label_column,
        where="--data",
    )
    raw = _LOADERS[kind](opts, None)
    row_name = raw.row_name or (lambda i: f"row {i}")
    x = _features(raw.x, raw.train_where, row_name)
    check_sample_shape(np.shape(raw.x), expect, f"{raw.source} [x]", "the model's input")
    return x, _labels(raw.y, raw.train_where, len(x), row_name)


def _read_labels(path):
    """One labels array from an IDX file, an .npy, an .npz (``y`` or its only array) or
    a one-column .csv."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy", ".csv") and not path.is_file():
        raise HornError(f"{path}: expected a labels file, found {found_at(path)}")
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".npz":
        arrays = read_npz(path)
        if "y" not in arrays and len(arrays) != 1:
            raise HornError(
                f"{path}: expected key 'y' or a single array, found {sorted(arrays) or 'no arrays'}"
            )
        return arrays.get("y", next(iter(arrays.values()), None))
    if suffix == ".csv":
        table, _ = _read_csv(path)
        if table.shape[1] != 1:
            raise HornError(f"{path}: expected one label per line, found {table.shape[1]} columns")
        return table[:, 0]
    return read_idx(path)


def _read_npy(path):
    """One .npy array, never unpickling."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise HornError(
                f"{path}: expected a numeric array, found an object array; refusing pickled data"
            ) from None
        raise HornError(f"{path}: expected a valid .npy file, found {err}") from None
    except Exception as err:  # truncated/garbled files raise various types
        raise HornError(
            f"{path}: expected a valid .npy file, found {type(err).__name__}: {err}"
        ) from None
    if not isinstance(array, np.ndarray):
        raise HornError(f"{path}: expected a single .npy array, found an .npz archive")
    return array


# --------------------------------------------------------------------------- validation


def _features(x, where, row_name):
    """Numeric, finite, non-empty features as float32 C-contiguous (n, features)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise HornError(f"{where}: expected numeric features, found dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0 or x.size == 0:
        raise HornError(
            f"{where}: expected at least one sample with features, found shape {x.shape}"
        )
    floats = x.dtype.kind == "f"
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf, refused next
        x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1) if floats else None  # float64 overflow becomes Inf too
    if floats and bad.any():
        raise HornError(
            f"{where}: expected finite features (within float32 range, |x| <= 3.4e38), "
            f"found NaN or Inf at {row_name(int(bad.argmax()))}"
        )
    return x


def _labels(y, where, n, row_name):
    """Non-negative integer labels, one per feature row, as int64."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise HornError(f"{where}: expected 1-D labels, found shape {y.shape}")
    if len(y) != n:
        raise HornError(f"{where}: expected one label per sample ({n}), found {len(y)} labels")
    if y.dtype.kind not in "iuf":
        raise HornError(f"{where}: expected integer labels, found dtype {y.dtype}")
    # The same bound for every dtype: a uint64 label past 2**63 would wrap negative in int64.
    with np.errstate(over="ignore"):  # 2**31 is Inf as float16, which is fine here
        bad = (y < 0) | (y >= 2**31)
    if y.dtype.kind == "f":
        bad |= y != np.floor(y)
    if bad.any():
        i = int(bad.argmax())
        raise HornError(
            f"{where}: expected non-negative integer labels, found {y[i]} at {row_name(i)}"
        )
    return y.astype(np.int64)


def _check_test(x_test, y_test, features, classes, where):
    """The test split must fit the model trained on the training split."""
    if x_test.shape[1] != features:
        raise HornError(
            f"{where}: expected {features} features per sample like the training "
            f"data, found {x_test.shape[1]}"
        )
    if y_test.max() >= classes:
        i = int(y_test.argmax())
        raise HornError(
            f"{where}: expected labels below {classes} (max training label + 1), "
            f"found {y_test[i]} at row {i}"
        )


def _split(n, fraction, seed, key):
    """Seeded permutation of range(n) cut into (fraction part, rest); rest never empty."""
    cut = round(n * fraction)
    if n - cut < 1 or (key == "test_fraction" and cut < 1):
        raise HornError(
            f"data.{key}: {fraction} of {n} samples leaves an empty split; "
            f"expected more samples or another fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    return order[:cut], order[cut:]


# --------------------------------------------------------------------------- options and paths


def _options(spec):
    """Read and check the data section, so typos fail before any loading."""
    get = spec.get if isinstance(spec, Mapping) else lambda key: getattr(spec, key, None)

    def value(key, default):
        found = get(key)
        return default if found is None else found

    name = value("name", None)
    if name not in DATASET_NAMES:
        raise HornError(f"data.name: expected one of {', '.join(DATASET_NAMES)}, found {name!r}")
    opts = _Options(
        name=name,
        path=get("path"),
        root=get("root"),
        val_fraction=_number(value("val_fraction", 0.1), "val_fraction", 0.0, True),
        test_fraction=_number(value("test_fraction", 0.2), "test_fraction", 0.0, False),
        scale=value("scale", "unit"),
        seed=_integer(value("seed", 0), "seed", None),
        limit=None if get("limit") is None else _integer(get("limit"), "limit", 1),
        label_column=_integer(value("label_column", -1), "label_column", None),
    )
    if opts.scale not in SCALE_KINDS:
        raise HornError(
            f"data.scale: expected one of {', '.join(SCALE_KINDS)}, found {opts.scale!r}"
        )
    for key in ("path", "root"):
        found = getattr(opts, key)
        if found is not None and not isinstance(found, (str, os.PathLike)):
            raise HornError(f"data.{key}: expected a path string, found {found!r}")
    return opts


def _number(found, key, low, low_inclusive):
    """A fraction in [low, 1) (or (low, 1)), rejecting bools and strings."""
    ok = isinstance(found, (int, float)) and not isinstance(found, bool) and found < 1
    if not ok or found < low or (found == low and not low_inclusive):
        bracket = "[" if low_inclusive else "("
        raise HornError(f"data.{key}: expected a number in {bracket}{low:g}, 1), found {found!r}")
    return float(found)


def _integer(found, key, low):
    """An int (numpy ints too, never bools), at least ``low`` when given."""
    if (
        isinstance(found, bool)
        or not isinstance(found, (int, np.integer))
        or (low is not None and found < low)
    ):
        floor = f" >= {low}" if low is not None else ""
        raise HornError(f"data.{key}: expected an integer{floor}, found {found!r}")
    return int(found)


def _data_file(opts, base_dir):
    """data.path of a file-based source (which cannot guess a default), resolved, inside
    data.root, and a regular file: a device or a FIFO would be read until memory runs out,
    so it is refused before it is opened."""
    if opts.path is None:
        raise HornError(f"{opts.where}: expected a file for data.name {opts.name!r}, found none")
    path = _within_root(_resolve(opts.path, base_dir, opts.where), opts.root, base_dir)
    found = found_at(path)
    if found != REGULAR:
        raise HornError(
            f"{opts.where}: expected a regular file of {opts.name} data, found {found} at {path}"
        )
    return path


def _resolve(path, base_dir, where):
    """Absolute, symlink-free path; ``~`` as in every job key; relative ones are relative
    to the job file. ``where`` names the key in errors."""
    path = Path(expand_home(os.fspath(path), where))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve()


def _within_root(path, root, base_dir):
    """``path`` resolved; with data.root set it must not escape it (symlinks included)."""
    path = Path(path).resolve()
    if root is not None:
        root = _resolve(root, base_dir, "data.root")
        if not path.is_relative_to(root):
            raise HornError(f"path {path} escapes data.root {root}")
    return path
