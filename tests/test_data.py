"""Tests for horn.data: strict IDX reading, every source's validation, splits, scaling."""

import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horn.data import Scaler, load_dataset, load_features, read_idx
from horn.errors import HornError

FASHION = Path("/usr/share/datasets/fashion-mnist")
CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array):
    """Encode ``array`` in the IDX format (big-endian, as the spec says)."""
    array = np.asarray(array)
    code = CODES[array.dtype.type]
    head = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_dir(directory, n_train=12, n_test=5, classes=3, gz=True, seed=0):
    """A tiny MNIST-like directory; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 3, 2), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % classes).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 3, 2), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % classes).astype(np.uint8),
    }
    for name, array in arrays.items():
        write(directory / (name + (".gz" if gz else "")), idx_bytes(array), gz)
    return arrays


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@dataclass
class DataSpec:
    """Stands in for the job file's data section (attributes, not a dict)."""

    name: str
    path: str = None
    root: str = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    scale: str = "unit"
    seed: int = 0
    limit: int = None


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(-3.5, 7.25, 10, dtype=np.float32).reshape(5, 2),
        np.array([-32768, 0, 32767], dtype=np.int16),
        np.array([[1e300, -2.5]], dtype=np.float64),
    ],
)
def test_read_idx_round_trips_exactly(tmp_path, array, gz):
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(array), gz))
    assert got.dtype == array.dtype and got.dtype.isnative
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_read_idx_detects_gzip_by_magic_not_extension(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "raw.gz", idx_bytes(array))), array)
    np.testing.assert_array_equal(
        read_idx(write(tmp_path / "packed-ubyte", idx_bytes(array), gz=True)), array
    )


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
MALFORMED = {
    "bad magic": (b"\x01\x00" + GOOD[2:], False, "magic"),
    "unknown dtype code": (GOOD[:2] + b"\x0a" + GOOD[3:], False, "dtype code"),
    "dtype code below range": (GOOD[:2] + b"\x07" + GOOD[3:], False, "0x07"),
    "zero dims": (GOOD[:3] + b"\x00", False, "at least 1 dimension"),
    "zero size dim": (GOOD[:4] + struct.pack(">I", 0) + GOOD[8:], False, "axis 0"),
    "short header": (GOOD[:3], False, "4-byte IDX header"),
    "truncated dims": (GOOD[:10], False, "truncated header"),
    "truncated payload": (GOOD[:-1], False, "truncated payload"),
    "trailing bytes": (GOOD + b"\x00", False, "trailing bytes"),
    "absurd dims raw": (
        b"\0\0\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 9),
        False,
        "truncated payload",
    ),
    "gz truncated payload": (GOOD[:-1], True, "truncated payload"),
    "gz trailing bytes": (GOOD + b"\x00", True, "trailing bytes"),
    "gz absurd dims": (
        b"\0\0\x0e\x02" + struct.pack(">2I", 2**32 - 1, 2**32 - 1),
        True,
        "gzip file can hold",
    ),
    "bad gzip": (b"\x1f\x8b" + b"\x99" * 40, False, "gzip"),
    "truncated gzip": (gzip.compress(GOOD)[:-12], False, "gzip"),
    "gzip bad crc": (
        gzip.compress(GOOD)[:-8] + b"\0\0\0\0" + gzip.compress(GOOD)[-4:],
        False,
        "gzip",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_read_idx_malformations_name_the_file(tmp_path, case):
    data, gz, expected = MALFORMED[case]
    path = write(tmp_path / f"case-{case.replace(' ', '_')}.idx", data, gz)
    with pytest.raises(HornError) as info:
        read_idx(path)
    message = str(info.value)
    assert path.name in message and expected in message and "\n" not in message


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(HornError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")
    with pytest.raises(HornError, match="directory"):
        read_idx(tmp_path)


def mutated_idx(draw):
    """A valid IDX file (maybe gzipped) with one flipped/cut/extended spot."""
    dtype = draw(st.sampled_from(list(CODES)))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    data = idx_bytes(np.zeros(shape, dtype=dtype))
    if draw(st.booleans()):
        data = gzip.compress(data)
    action = draw(st.sampled_from(["flip", "cut", "extend", "none"]))
    at = draw(st.integers(0, len(data) - 1))
    if action == "flip":
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    elif action == "cut":
        data = data[:at]
    elif action == "extend":
        data = data + draw(st.binary(min_size=1, max_size=8))
    return data


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzz.idx"


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: b"\x1f\x8b" + b),
        st.builds(
            lambda head, rest: b"\0\0" + head + rest,
            st.binary(min_size=2, max_size=2),
            st.binary(max_size=48),
        ),
        st.composite(mutated_idx)(),
    )
)
def test_read_idx_fuzz_only_raises_horn_error(fuzz_file, data):
    fuzz_file.write_bytes(data)
    try:
        result = read_idx(fuzz_file)
    except HornError as err:
        assert "fuzz.idx" in str(err)
    else:
        assert isinstance(result, np.ndarray) and result.size > 0


# --------------------------------------------------------------------------- IDX data sets


def test_idx_directory_loads_with_fixed_test_split(tmp_path):
    arrays = write_idx_dir(tmp_path / "d", n_train=20, n_test=5, gz=False)
    data = load_dataset(
        DataSpec("idx", path="d", val_fraction=0.25, scale="none"), base_dir=tmp_path
    )
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (15, 5, 5)
    assert data.features == 6 and data.classes == 3
    np.testing.assert_array_equal(
        data.x_test, arrays["t10k-images-idx3-ubyte"].reshape(5, 6).astype(np.float32)
    )
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    pool = np.concatenate([data.x_train, data.x_val])
    assert sorted(map(tuple, pool)) == sorted(
        map(tuple, arrays["train-images-idx3-ubyte"].reshape(20, 6).astype(np.float32))
    )


def test_horn_data_env_with_subdirectory(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "fashion-mnist")
    monkeypatch.setenv("HORN_DATA", str(tmp_path))
    data = load_dataset({"name": "fashion_mnist"})
    assert data.source == str(tmp_path / "fashion-mnist")


def test_missing_idx_directory_lists_tried_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HORN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(HornError) as info:
        load_dataset({"name": "mnist"})
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "nowhere" / "mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "HORN_DATA" in message


def test_idx_image_label_count_mismatch(tmp_path):
    write_idx_dir(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(7, np.uint8)), gz=True)
    with pytest.raises(HornError, match="train-labels-idx1-ubyte.*found 7 labels"):
        load_dataset({"name": "idx", "path": str(tmp_path)})


def test_idx_test_label_out_of_range(tmp_path):
    write_idx_dir(tmp_path, classes=3)
    write(
        tmp_path / "t10k-labels-idx1-ubyte.gz",
        idx_bytes(np.array([0, 1, 9, 2, 0], np.uint8)),
        gz=True,
    )
    with pytest.raises(HornError, match=r"t10k-labels-idx1-ubyte.*below 3.*found 9 at row 2"):
        load_dataset({"name": "idx", "path": str(tmp_path)})


@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    data = load_dataset(DataSpec("fashion_mnist", val_fraction=0.1))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (54000, 6000, 10000)
    assert data.features == 784 and data.classes == 10 and data.scaler.scale == 255.0
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous
    assert data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    assert data.y_train.dtype == np.int64 and set(np.unique(data.y_test)) == set(range(10))


# --------------------------------------------------------------------------- digits, scaling


def test_digits_shapes_and_seeded_split():
    a = load_dataset(DataSpec("digits", seed=1))
    b = load_dataset(DataSpec("digits", seed=1))
    c = load_dataset(DataSpec("digits", seed=2))
    n_test = round(1797 * 0.2)
    n_val = round((1797 - n_test) * 0.1)
    assert a.x_train.shape == (1797 - n_test - n_val, 64) and a.x_val.shape == (n_val, 64)
    assert a.x_test.shape == (n_test, 64) and a.classes == 10 and a.features == 64
    for arr in (a.x_train, a.x_val, a.x_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
    assert a.y_train.dtype == np.int64 and a.name == "digits"
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.x_train, c.x_train)
    np.testing.assert_array_equal(a.x_test, c.x_test)  # the test split is fixed across seeds
    assert a.scaler.scale == 16.0 and a.x_train.max() == 1.0


def test_limit_keeps_first_training_samples():
    full = load_dataset(DataSpec("digits", seed=3))
    small = load_dataset(DataSpec("digits", seed=3, limit=100))
    assert len(small.x_train) == 100 and len(small.x_val) == len(full.x_val)
    np.testing.assert_array_equal(small.y_train, full.y_train[:100])


def shifted_npz(tmp_path):
    """Train data in [0, 10], test data far away: leaks in the statistics would show."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (200, 3))
    x_test = rng.uniform(50, 100, (40, 3))
    return save_npz(
        tmp_path / "shift.npz",
        x=x,
        y=rng.integers(0, 4, 200),
        x_test=x_test,
        y_test=rng.integers(0, 4, 40),
    )


def test_unit_scaling_uses_train_statistics_only(tmp_path):
    path = shifted_npz(tmp_path)
    data = load_dataset(DataSpec("npz", path=str(path), val_fraction=0.5, limit=30))
    raw_train = np.load(path)["x"][np.random.default_rng(0).permutation(200)[100:130]]
    assert data.scaler.scale == pytest.approx(raw_train.max(), rel=1e-6)
    assert data.x_train.max() == pytest.approx(1.0)
    assert data.x_test.min() > 4.0  # test values scaled by the train max, not their own


def test_standard_scaling_uses_train_statistics_only(tmp_path):
    data = load_dataset(
        DataSpec("npz", path=str(shifted_npz(tmp_path)), scale="standard", val_fraction=0.3)
    )
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert data.x_test.mean() > 10  # test is far from train: not re-centred on itself
    np.testing.assert_allclose(data.x_val.mean(axis=0), 0, atol=0.5)
    np.testing.assert_array_equal(
        data.scaler.apply(np.load(tmp_path / "shift.npz")["x_test"]), data.x_test
    )


def test_standard_scaling_floors_constant_features(tmp_path):
    x = np.ones((20, 2))
    x[:, 1] = np.arange(20)
    path = save_npz(tmp_path / "c.npz", x=x, y=np.arange(20) % 2)
    data = load_dataset({"name": "npz", "path": str(path), "scale": "standard"})
    assert np.isfinite(data.x_train).all() and data.scaler.scale[0] == pytest.approx(1e-6)


# --------------------------------------------------------------------------- npz


def test_npz_flattens_and_keeps_test_arrays(tmp_path):
    x = np.arange(30 * 2 * 2, dtype=np.uint8).reshape(30, 2, 2)
    x_test = np.full((4, 2, 2), 7, np.uint8)
    path = save_npz(
        tmp_path / "img.npz", x=x, y=np.arange(30) % 5, x_test=x_test, y_test=np.array([0, 1, 2, 3])
    )
    data = load_dataset(
        DataSpec("npz", path="img.npz", scale="none", val_fraction=0.0), base_dir=tmp_path
    )
    assert data.x_train.shape == (30, 4) and data.x_val.shape == (0, 4)
    assert data.classes == 5 and data.source == str(path)
    np.testing.assert_array_equal(data.x_test, x_test.reshape(4, 4))


def test_npz_pickled_object_array_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(HornError, match="evil.npz.*refusing pickled data"):
        load_dataset({"name": "npz", "path": str(path)})


def test_npz_missing_key_and_length_mismatch(tmp_path):
    with pytest.raises(HornError, match=r"k\.npz.*'x' and 'y'.*\['x'\]"):
        load_dataset({"name": "npz", "path": str(save_npz(tmp_path / "k.npz", x=np.ones((3, 2))))})
    path = save_npz(tmp_path / "m.npz", x=np.ones((10, 2)), y=np.zeros(9, int))
    with pytest.raises(HornError, match=r"m\.npz.*\(10\), found 9 labels"):
        load_dataset({"name": "npz", "path": str(path)})


def test_nan_in_features_reported_with_row(tmp_path):
    x = np.ones((10, 3))
    x[6, 1] = np.nan
    path = save_npz(tmp_path / "nan.npz", x=x, y=np.zeros(10, int))
    with pytest.raises(HornError, match=r"nan\.npz.*NaN or Inf at row 6"):
        load_dataset({"name": "npz", "path": str(path)})


@pytest.mark.parametrize("labels, found", [([0, 1, -1, 0], "-1"), ([0, 1.5, 1, 0], "1.5")])
def test_bad_labels_reported(tmp_path, labels, found):
    path = save_npz(tmp_path / "lab.npz", x=np.ones((4, 2)), y=np.array(labels))
    with pytest.raises(HornError, match=rf"lab\.npz.*non-negative integer labels, found {found}"):
        load_dataset({"name": "npz", "path": str(path)})


def test_npz_test_label_out_of_range(tmp_path):
    path = save_npz(
        tmp_path / "t.npz",
        x=np.ones((10, 2)),
        y=np.arange(10) % 3,
        x_test=np.ones((3, 2)),
        y_test=np.array([0, 7, 1]),
    )
    with pytest.raises(HornError, match=r"t\.npz \[x_test/y_test\].*below 3.*found 7 at row 1"):
        load_dataset({"name": "npz", "path": str(path)})


# --------------------------------------------------------------------------- csv


def test_csv_with_header_and_label_column(tmp_path):
    rows = [f"{i},{i * 2},{i % 3}" for i in range(20)]
    (tmp_path / "t.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n\n")
    data = load_dataset(
        {"name": "csv", "path": "t.csv", "scale": "none", "val_fraction": 0.0}, base_dir=tmp_path
    )
    assert data.features == 2 and data.classes == 3
    pool = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    np.testing.assert_array_equal(labels, pool[:, 0] % 3)
    first = load_dataset({"name": "csv", "path": str(tmp_path / "t.csv"), "label_column": 0})
    assert first.classes == 20 and first.features == 2


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ("1,2", "line 4: expected 3 fields, found 2"),
        ("1,x,0", "line 4: field 2: expected a number, found 'x'"),
        ("1,nan,0", "NaN or Inf at line 4"),
        ("1,2,-3", "found -3.0 at line 4"),
    ],
)
def test_csv_bad_line_reported_with_line_number(tmp_path, bad_line, expected):
    (tmp_path / "bad.csv").write_text(f"f,g,y\n1,2,0\n3,4,1\n{bad_line}\n5,6,1\n")
    with pytest.raises(HornError) as info:
        load_dataset({"name": "csv", "path": str(tmp_path / "bad.csv")})
    assert "bad.csv" in str(info.value) and expected in str(info.value)


def test_csv_not_text(tmp_path):
    (tmp_path / "bin.csv").write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(HornError, match="bin.csv.*UTF-8"):
        load_dataset({"name": "csv", "path": str(tmp_path / "bin.csv")})


CSV_NAMES = ["a", "x1", "label", "f 2", "", "pixel_0"]  # header fields: none is a number
# A number as people and tools write it: the header rule must read every one as data.
NUMBER_FORMATS = [
    repr,
    "{:.3e}".format,
    "{:+g}".format,
    "{:.2f}".format,
    "{:E}".format,
    lambda v: re.sub(r"^([+-]?)0\.", r"\1.", f"{v:.3f}"),  # .5
    lambda v: f"{int(v)}.",  # 5.
    lambda v: f"{int(v):06d}",  # 000005
]
FINITE = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)


@st.composite
def csv_cells(draw):
    """A number's text, maybe padded with blanks (which float() takes), maybe quoted."""
    value = draw(st.one_of(FINITE, st.floats(-2, 2, allow_nan=False)))
    text = draw(st.sampled_from(NUMBER_FORMATS))(value)
    pad = draw(st.sampled_from(["", " ", "  ", "\t"]))
    text = f"{pad}{text}{pad}"
    return f'"{text}"' if draw(st.booleans()) else text


@st.composite
def numeric_csvs(draw):
    """``(bytes, the rows' numbers)``: numeric rows, maybe under a header of names, with
    or without a byte order mark, blank lines before them, and either line ending."""
    width = draw(st.integers(1, 4))
    cells = st.lists(csv_cells(), min_size=width, max_size=width)
    rows = draw(st.lists(cells, min_size=1, max_size=4))
    names = st.lists(st.sampled_from(CSV_NAMES), min_size=width, max_size=width).filter(any)
    header = draw(st.one_of(st.none(), names))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [""] * draw(st.integers(0, 2)) + ([",".join(header)] if header else [])
    text = eol.join(lines + [",".join(row) for row in rows]) + draw(st.sampled_from(["", eol]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    numbers = [[float(cell.strip('"')) for cell in row] for row in rows]
    return (bom + text).encode(), numbers


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(numeric_csvs())
def test_numeric_first_rows_are_never_dropped(tmp_path, case):
    data, numbers = case
    (tmp_path / "x.csv").write_bytes(data)
    np.testing.assert_array_equal(
        load_features(tmp_path / "x.csv"), np.array(numbers, dtype=np.float32)
    )


def test_a_bom_is_not_part_of_the_first_row(tmp_path):
    rows = "1,2,0\n3,4,1\n5,6,1\n"
    (tmp_path / "bom.csv").write_bytes(("\ufeff" + rows).encode())
    assert load_features(tmp_path / "bom.csv").shape == (3, 3)
    (tmp_path / "header.csv").write_bytes(("\ufeffa,b,label\n" + rows).encode())
    assert load_features(tmp_path / "header.csv").shape == (3, 3)


@pytest.mark.parametrize(
    "first, field, found",
    [
        ("1,,0", 2, "''"),
        ("1.5,x,0", 2, "'x'"),
        ("a,2,label", 1, "'a'"),
        ("1,2,label", 3, "'label'"),
    ],
)
def test_a_first_row_with_some_numbers_is_refused(tmp_path, first, field, found):
    """Neither a header (it holds numbers) nor data (it holds a non-number): an error
    naming the line, never a row silently taken for a header."""
    (tmp_path / "t.csv").write_text(f"\n{first}\n3,4,1\n5,6,1\n")
    with pytest.raises(HornError) as info:
        load_dataset({"name": "csv", "path": str(tmp_path / "t.csv")})
    assert str(info.value).startswith(
        f"{tmp_path / 't.csv'}: line 2: field {field}: expected a number (a first row with "
    )
    assert str(info.value).endswith(f"is data, not a header), found {found}")


# --------------------------------------------------------------------------- paths and options


def test_root_escape_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    save_npz(tmp_path / "outside.npz", x=np.ones((10, 2)), y=np.arange(10) % 2)
    save_npz(root / "inside.npz", x=np.ones((10, 2)), y=np.arange(10) % 2)
    (root / "link.npz").symlink_to(tmp_path / "outside.npz")
    assert (
        load_dataset(
            {"name": "npz", "path": "data/inside.npz", "root": "data"}, base_dir=tmp_path
        ).classes
        == 2
    )
    for path in ("data/../outside.npz", "data/link.npz", str(tmp_path / "outside.npz")):
        with pytest.raises(HornError, match=r"path .*outside\.npz escapes data\.root .*data"):
            load_dataset({"name": "npz", "path": path, "root": "data"}, base_dir=tmp_path)


@pytest.mark.parametrize("name", ["csv", "npz"])
@pytest.mark.parametrize(
    "kind, found", [("dir", "a directory"), ("fifo", "a FIFO"), ("device", "a character device")]
)
def test_data_that_is_no_regular_file_is_refused_unopened(tmp_path, name, kind, found):
    """A device or a FIFO would be read until memory runs out (or forever): refused
    before it is opened, naming the key."""
    path = {"dir": tmp_path / "d", "fifo": tmp_path / "f", "device": Path("/dev/zero")}[kind]
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(HornError) as info:
        load_dataset({"name": name, "path": str(path)})
    assert (
        str(info.value)
        == f"data.path: expected a regular file of {name} data, found {found} at {path}"
    )
    if kind == "fifo":  # a features file for predict, too
        suffixed = tmp_path / f"f.{name}"
        os.mkfifo(suffixed)
        with pytest.raises(HornError, match=f"{suffixed}: expected an input file, found a FIFO"):
            load_features(suffixed)


def test_data_paths_expand_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.csv").write_text("1,2,0\n3,4,1\n5,6,1\n7,8,0\n9,9,1\n")
    spec = {"name": "csv", "path": "~/t.csv", "root": "~", "val_fraction": 0.0}
    assert load_dataset(spec, base_dir="/elsewhere").source == str(tmp_path / "t.csv")
    for key in ("path", "root"):
        with pytest.raises(HornError, match=f"^data.{key}: expected '~horn-no-such-user' to name"):
            load_dataset({**spec, key: "~horn-no-such-user/t.csv"})


def test_root_applies_to_idx_search(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "elsewhere")
    monkeypatch.setenv("HORN_DATA", str(tmp_path / "elsewhere"))
    (tmp_path / "jail").mkdir()
    with pytest.raises(HornError, match="escapes data.root"):
        load_dataset({"name": "idx", "root": str(tmp_path / "jail")})


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"name": "imagenet"}, "data.name: expected one of"),
        (
            {"name": "digits", "val_fraction": 1.0},
            r"data.val_fraction: expected a number in \[0, 1\)",
        ),
        (
            {"name": "digits", "test_fraction": 0},
            r"data.test_fraction: expected a number in \(0, 1\)",
        ),
        ({"name": "digits", "scale": "minmax"}, "data.scale"),
        ({"name": "digits", "seed": 1.5}, "data.seed: expected an integer"),
        ({"name": "digits", "limit": 0}, "data.limit: expected an integer >= 1"),
        ({"name": "npz"}, "data.path: expected a file"),
    ],
)
def test_bad_options(spec, expected):
    with pytest.raises(HornError, match=expected):
        load_dataset(spec)


# --------------------------------------------------------------------------- prediction inputs


def test_load_features_all_formats(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    flat = x.reshape(3, 4)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, other=np.zeros(2))
    np.savez(tmp_path / "c.npz", x)
    (tmp_path / "d.csv").write_text("p,q,r,s\n" + "\n".join(",".join(map(str, r)) for r in flat))
    write(tmp_path / "e-ubyte.gz", idx_bytes(x), gz=True)
    for name in ("a.npy", "b.npz", "c.npz", "d.csv", "e-ubyte.gz"):
        got = load_features(tmp_path / name)
        assert got.dtype == np.float32 and got.flags.c_contiguous, name
        np.testing.assert_array_equal(got, flat, err_msg=name)


def test_load_features_errors(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object))
    with pytest.raises(HornError, match="obj.npy.*refusing pickled data"):
        load_features(tmp_path / "obj.npy")
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(HornError, match="trunc.npy"):
        load_features(tmp_path / "trunc.npy")
    with pytest.raises(HornError, match="missing.npz"):
        load_features(tmp_path / "missing.npz")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(HornError, match="nan.csv.*line 2"):
        load_features(tmp_path / "nan.csv")


def test_scaler_apply_checks_feature_count():
    scaler = Scaler.fit("standard", np.array([[1.0, 2.0], [3.0, 6.0]], np.float32))
    np.testing.assert_allclose(scaler.apply([[2.0, 4.0]]), [[0.0, 0.0]])
    with pytest.raises(HornError, match=r"expected features of shape \(n, 2\), found \(1, 3\)"):
        scaler.apply(np.ones((1, 3)))


# --------------------------------------------------------------------------- stated sample shapes


def stripped(shape):
    """A shape less its leading size-1 axes: (1, 8, 8) and (8, 8) state the same image."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


@st.composite
def image_and_other(draw):
    """An image shape (C, H, W) and another per-sample shape of 2 or 3 axes holding the
    same number of values (a transposed or re-cut image), never the same image."""
    image = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(2, 6)))
    size = int(np.prod(image))
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    first = draw(st.sampled_from(divisors))
    if draw(st.booleans()):
        other = (first, size // first)
    else:
        rest = size // first
        second = draw(st.sampled_from([d for d in divisors if rest % d == 0]))
        other = (first, second, rest // second)
    return image, other, stripped(other) != stripped(image)


def image_files(directory, array, stem):
    """The same samples as .npy, .npz (key x, and a lone array) and IDX: the paths."""
    np.save(directory / f"{stem}.npy", array)
    np.savez(directory / f"{stem}.npz", x=array, y=np.zeros(len(array), int))
    np.savez(directory / f"{stem}-lone.npz", array)
    write(directory / f"{stem}-idx3-ubyte", idx_bytes(array.astype(np.uint8)))
    return {
        f"{stem}.npy": str(directory / f"{stem}.npy"),
        f"{stem}.npz": f"{directory / f'{stem}.npz'} [x]",
        f"{stem}-lone.npz": f"{directory / f'{stem}-lone.npz'} [arr_0]",
        f"{stem}-idx3-ubyte": str(directory / f"{stem}-idx3-ubyte"),
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image_and_other(), st.integers(1, 4))
def test_inputs_that_state_another_image_shape_are_refused(tmp_path, shapes, n):
    from horn.data import load_labelled

    image, other, differs = shapes
    size = int(np.prod(image))
    x = (np.arange(n * size) % 200).astype(np.float64)
    (tmp_path / "y.npy").unlink(missing_ok=True)
    np.save(tmp_path / "y.npy", np.zeros(n, int))
    flat = x.reshape(n, size)
    wrong = image_files(tmp_path, x.reshape(n, *other), "wrong")
    right = {
        **image_files(tmp_path, x.reshape(n, *image), "right"),
        **(image_files(tmp_path, x.reshape(n, *image[1:]), "right2") if image[0] == 1 else {}),
    }
    np.save(tmp_path / "flat.npy", flat)
    np.savetxt(tmp_path / "flat.csv", flat, delimiter=",")
    for name, where in wrong.items():
        path = tmp_path / name
        load_features(path)  # no model named: nothing to compare with
        np.testing.assert_array_equal(load_features(path, expect=size), flat)  # an MLP
        if not differs:
            continue
        message = f"{where}: expected samples of shape {image} (the model's input), found {other}"
        with pytest.raises(HornError) as refused:
            load_features(path, expect=image)
        assert str(refused.value) == message
        with pytest.raises(HornError) as refused:
            if name.endswith(".npz") and "lone" not in name:
                load_labelled(path, expect=image)
            else:
                load_labelled(path, tmp_path / "y.npy", expect=image)
        assert str(refused.value) == message
    for name in [*right, "flat.npy", "flat.csv"]:
        np.testing.assert_array_equal(load_features(tmp_path / name, expect=image), flat)
        got, _ = load_labelled(tmp_path / name, tmp_path / "y.npy", expect=image)
        np.testing.assert_array_equal(got, flat)
    got, _ = load_labelled(tmp_path / "right.npz", expect=image)
    np.testing.assert_array_equal(got, flat)


def test_the_shape_strategy_finds_real_mismatches():
    """The property above is not vacuous: most drawn shapes differ from the image."""
    seen = []

    @settings(max_examples=50, deadline=None)
    @given(image_and_other())
    def collect(shapes):
        seen.append(shapes[2])

    collect()
    assert sum(seen) > len(seen) // 2


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image_and_other())
def test_npz_test_split_must_state_the_shape_of_x(tmp_path, shapes):
    image, other, differs = shapes
    size = int(np.prod(image))
    x = np.random.default_rng(0).random((20, size))
    y, y_test = np.arange(20) % 2, np.arange(6) % 2
    x_test = x[:6]

    def load(train, test):
        path = save_npz(tmp_path / "d.npz", x=train, y=y, x_test=test, y_test=y_test)
        return load_dataset({"name": "npz", "path": str(path), "scale": "none"})

    trains = [x.reshape(20, *image)] + ([x.reshape(20, *image[1:])] if image[0] == 1 else [])
    tests = [x_test.reshape(6, *image), x_test]
    tests += [x_test.reshape(6, *image[1:])] if image[0] == 1 else []
    for train in trains:  # both declare the sample shape `image`
        for test in tests:
            np.testing.assert_array_equal(load(train, test).x_test, x_test.astype(np.float32))
        if differs:
            with pytest.raises(HornError) as refused:
                load(train, x_test.reshape(6, *other))
            assert str(refused.value) == (
                f"{tmp_path / 'd.npz'} [x_test]: expected samples of shape "
                f"{image} (like x), found {other}"
            )
    # flat training rows declare no image, so any test layout of that width is read
    assert load(x, x_test.reshape(6, *other)).x_test.shape == (6, size)
    assert load(x.reshape(20, *other), x_test).x_test.shape == (6, size)  # flat test rows


def test_idx_test_images_must_have_the_training_images_shape(tmp_path):
    write_idx_dir(tmp_path, gz=False)  # images of 3x2
    spec = {"name": "idx", "path": str(tmp_path)}
    assert load_dataset(spec).sample_shape == (1, 3, 2)
    test_images = tmp_path / "t10k-images-idx3-ubyte"
    write(test_images, idx_bytes(np.zeros((5, 2, 3), np.uint8)))
    with pytest.raises(HornError) as refused:
        load_dataset(spec)
    assert str(refused.value) == (
        f"{test_images}: expected samples of shape (1, 3, 2) "
        f"(like train-images-idx3-ubyte), found (2, 3)"
    )
    write(test_images, idx_bytes(np.zeros((5, 6), np.uint8)))  # flat rows: accepted
    assert load_dataset(spec).x_test.shape == (5, 6)


def test_an_npz_array_name_that_is_not_an_identifier_stays_on_one_line(tmp_path):
    """A zip member may be named anything, a newline included: messages show its repr."""
    import zipfile

    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as z, z.open("\n.npy", "w") as member:
        np.save(member, np.zeros(()))
    with pytest.raises(HornError) as refused:
        load_features(path)
    assert "\n" not in str(refused.value) and "[" + repr("\n") + "]" in str(refused.value)
