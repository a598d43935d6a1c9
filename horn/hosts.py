"""Hostfile validation before launch.

mpirun's own hostfile errors are vague and arrive after a slow start; checking
here lets us name the file, the line, what was expected and what was found.
Accepts Open MPI lines (``node1 slots=4 max_slots=8``) and MPICH lines
(``node1:4``); ``#`` starts a comment.
"""

import ipaddress
import re

from horn.errors import HornError
from horn.suggest import did_you_mean

_KEYS = ("slots", "max_slots")
_MAX_SLOTS = 1_000_000
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_hostfile(path):
    """Return ``([(host, slots), ...], total_slots)`` or raise HornError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise HornError(f"{path}: cannot read hostfile: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise HornError(
            f"{path}:{line}: expected UTF-8 text, found byte 0x{raw[exc.start]:02x}"
        ) from None
    return parse_hosts(text, str(path))


def parse_hosts(text, filename):
    """Parse hostfile ``text``; ``filename`` only labels error messages."""
    hosts, first_line = [], {}
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{filename}:{number}"
        words = re.sub(r"\s*=\s*", "=", line.split("#", 1)[0]).split()
        if not words:
            continue
        name, slots = _parse_line(words, where)
        key = name.lower()
        if key in first_line:
            raise HornError(
                f"{where}: duplicate host '{name}' (first listed on line {first_line[key]})"
            )
        first_line[key] = number
        hosts.append((name, slots))
    if not hosts:
        raise HornError(
            f"{filename}: no hosts found; expected lines like 'node1 slots=4' or 'node1:4'"
        )
    return hosts, sum(slots for _, slots in hosts)


def _parse_line(words, where):
    head, options = words[0], words[1:]
    if ":" in head:
        if options:
            raise HornError(
                f"{where}: expected 'HOST:SLOTS' alone (MPICH syntax) or "
                f"'HOST slots=N' (Open MPI syntax), found both in '{' '.join(words)}'"
            )
        name, _, count = head.partition(":")
        _check_host(name, where)
        return name, _positive(count, "slots (after ':')", where)
    _check_host(head, where)
    values = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq:
            raise HornError(
                f"{where}: expected KEY=VALUE such as slots=4 after host '{head}', found '{option}'"
            )
        if key not in _KEYS:
            raise HornError(
                f"{where}: unknown key '{key}'{did_you_mean(key, _KEYS)} (expected "
                f"one of: {', '.join(_KEYS)})"
            )
        if key in values:
            raise HornError(f"{where}: key '{key}' given twice for host '{head}'")
        values[key] = _positive(value, key, where)
    slots = values.get("slots", 1)
    if values.get("max_slots", slots) < slots:
        raise HornError(f"{where}: max_slots={values['max_slots']} is less than slots={slots}")
    return head, slots


def _check_host(name, where):
    """RFC 1123 host name or dotted IPv4 address."""
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise HornError(f"{where}: invalid IPv4 address '{name}'") from None
        return
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise HornError(
            f"{where}: invalid host name '{name}' (expected letters, digits, '-' and "
            f"'.'-separated labels of 1-63 characters, or an IPv4 address)"
        )


def _positive(text, what, where):
    if not re.fullmatch(r"[0-9]{1,7}", text) or not 0 < int(text) <= _MAX_SLOTS:
        raise HornError(
            f"{where}: {what} must be a positive integer (at most {_MAX_SLOTS}), found '{text}'"
        )
    return int(text)
