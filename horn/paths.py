"""File names from users: one rule for ``~``, what sits at a path, and where output goes.

Every path a job or a command names goes through :func:`expand_home`, so ``~`` means
the same in every key; data files are checked with :func:`found_at` before they are
opened, since a device or a FIFO would be read forever, and outputs with
:func:`output_file` before any work is done.
"""

import os
import stat
from pathlib import Path

from horn.errors import HornError

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)
REGULAR = _KINDS[0][1]


def expand_home(path, where):
    """``path`` (a string) with a leading ``~`` or ``~user`` expanded as a shell does.

    ``where`` names the key in the error, or is a function making that name (so only
    an error pays for finding its line). A user without a home directory is that
    error, not pathlib's RuntimeError; a ``~`` anywhere but first is a plain character.
    """
    if not path.startswith("~"):
        return path
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):  # expanduser leaves what it cannot expand as it was
        user = path[1:].split("/", 1)[0]
        name = where() if callable(where) else where
        home = f"user {user!r}" if user else "the current user (HOME is unset)"
        raise HornError(
            f"{name}: expected '~{user}' to name a home directory, found no home "
            f"directory for {home} in {path!r}"
        )
    return expanded


def found_at(path):
    """What sits at ``path``, in words: ``a regular file``, ``a directory``, ``a FIFO``, ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "nothing (no such file)"
    except NotADirectoryError:
        return "nothing (a parent is not a directory)"
    except (OSError, ValueError) as exc:  # a loop, no permission, a NUL byte
        return f"a path that cannot be examined ({getattr(exc, 'strerror', None) or exc})"
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def output_file(path, example, suffix=None):
    """``--out`` checked before any work: a file (ending in ``suffix`` when given) in an
    existing directory; none is created, so a mistyped directory is an error rather than
    a new tree. ``example`` is a file name the message suggests inside a directory."""
    path = Path(path)
    if path.is_dir():
        raise HornError(
            f"--out {path}: expected a file to write, found a directory "
            f"(for example --out {path / example})"
        )
    parent = path.parent
    if not parent.is_dir():
        raise HornError(
            f"--out {path}: expected an existing directory {parent}, found "
            f"{found_at(parent)} (horn creates no directories; make it first)"
        )
    if suffix is not None and path.suffix.lower() != suffix:
        raise HornError(
            f"--out {path}: expected a file name ending in {suffix}, "
            f"found {path.suffix or 'none'} (for example --out {path.with_suffix(suffix)})"
        )
    return path
