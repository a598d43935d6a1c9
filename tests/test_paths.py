"""horn.paths: ``~`` expanded by one rule, what sits at a path in words, ``--out`` checked
before any work (``horn compare`` among its users)."""

import os
import pwd

import pytest

from horn.compare import compare
from horn.errors import HornError
from horn.paths import expand_home, found_at, output_file

UNKNOWN = "~horn-no-such-user"


def test_expand_home_as_a_shell_does(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = pwd.getpwuid(0).pw_dir
    assert expand_home("~", "k") == str(tmp_path)
    assert expand_home("~/a/b", "k") == str(tmp_path / "a/b")
    assert expand_home("~root/x", "k") == f"{root}/x"
    for plain in ("a/~/b", "./~x", "/abs", ""):
        assert expand_home(plain, "k") == plain


def test_unknown_user_is_one_line_naming_the_key():
    with pytest.raises(HornError) as info:
        expand_home(f"{UNKNOWN}/x.csv", "data.path")
    message = str(info.value)
    assert message.startswith("data.path: expected '~horn-no-such-user' to name a home")
    assert f"'{UNKNOWN}/x.csv'" in message and "\n" not in message


def test_where_is_only_made_for_an_error():
    def where():
        raise AssertionError("where() is made only for a message")

    assert expand_home("x", where) == "x"
    with pytest.raises(HornError, match="^job.toml:3: log.dir: "):
        expand_home(UNKNOWN, lambda: "job.toml:3: log.dir")


def test_no_home_for_the_current_user(monkeypatch):
    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.delenv("HOME")
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(HornError, match=r"^k: expected '~' .*current user \(HOME is unset\)"):
        expand_home("~/x", "k")


def test_found_at_names_each_kind(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    assert found_at(tmp_path / "f") == "a regular file"
    assert found_at(tmp_path) == "a directory"
    assert found_at("/dev/null") == "a character device"
    assert found_at(tmp_path / "fifo") == "a FIFO"  # examined, never opened (would block)
    assert found_at(tmp_path / "gone") == "nothing (no such file)"
    assert found_at(tmp_path / "f" / "x") == "nothing (a parent is not a directory)"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert found_at(tmp_path / "loop").startswith("a path that cannot be examined (")


@pytest.mark.parametrize(
    "out, message",
    [
        ("sub", r"--out .*sub: expected a file to write, found a directory \(for example .*"),
        ("nodir/x.png", r"expected an existing directory .*nodir, found nothing \(no such file\)"),
        ("f/x.png", r"expected an existing directory .*f, found a regular file"),
        ("cmp", r"expected a file name ending in \.png, found none \(for example --out .*cmp.png"),
        ("cmp.pdf", r"expected a file name ending in \.png, found \.pdf"),
    ],
)
def test_output_file_refused_before_any_work(tmp_path, out, message):
    (tmp_path / "sub").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(HornError, match=message):
        output_file(tmp_path / out, "compare.png", suffix=".png")
    # horn compare checks --out before it reads a run (these run directories do not exist)
    with pytest.raises(HornError, match=message):
        compare([tmp_path / "no-run"], tmp_path / out)


def test_output_file_accepted(tmp_path):
    assert output_file(tmp_path / "p.csv", "predictions.csv") == tmp_path / "p.csv"
    assert output_file(tmp_path / "C.PNG", "compare.png", ".png") == tmp_path / "C.PNG"
