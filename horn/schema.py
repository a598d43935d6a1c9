"""Checking a JSON document horn wrote and now reads back (a checkpoint manifest).

A missing key, a value of the wrong type or one out of range is a one-line HornError
naming the file and the key, what was expected and what was found -- found before the
value is used, never as a KeyError or TypeError once the run directory was changed.
"""

import math

from horn.errors import HornError

COUNT_MAX = 2**63 - 1  # what horn's counters (steps, rounds, bytes) fit in
_NONE = object()  # "found" for a key that is absent


def shown(value):
    """``value`` as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


class Document:
    """The parsed JSON ``root`` of the file ``source``. A key is a path from the root,
    e.g. ``("ranks", "0", "step")``, shown as ``ranks.0.step``."""

    def __init__(self, source, root):
        self.source, self.root = source, root

    def fail(self, path, expected, found=_NONE):
        text = "none" if found is _NONE else shown(found)
        name = ".".join(map(str, path)) or "the document"
        raise HornError(f"{self.source}: {name}: expected {expected}, found {text}")

    def value(self, path, expected):
        """The value at ``path``; a missing key, or a non-table on the way, is an error."""
        node = self.root
        for i, key in enumerate(path):
            if isinstance(key, int):
                if not (isinstance(node, list) and key < len(node)):
                    self.fail(path[:i], f"a list of more than {key} values", node)
            elif not isinstance(node, dict):
                self.fail(path[:i], "a table", node)
            elif key not in node:
                self.fail(path[: i + 1], expected)
            node = node[key]
        return node

    def count(self, path, low=0, high=COUNT_MAX):
        """A whole number from ``low`` to ``high`` (a bool is not one)."""
        top = "2**63 - 1" if high == COUNT_MAX else high
        expected = f"a whole number from {low} to {top}"
        value = self.value(path, expected)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(path, expected, value)
        return value

    def number(self, path, low=-math.inf, high=math.inf):
        """A finite number from ``low`` to ``high``."""
        bounds = [f">= {low}" if low > -math.inf else "", f"<= {high}" if high < math.inf else ""]
        expected = " ".join(["a finite number", *filter(None, bounds)])
        value = self.value(path, expected)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            self.fail(path, expected, value)
        return value

    def typed(self, path, kind, expected):
        """A value of type ``kind`` (``dict``, ``list``, ``str``)."""
        value = self.value(path, expected)
        if not isinstance(value, kind):
            self.fail(path, expected, value)
        return value

    def like(self, template, path, optional=(), high=COUNT_MAX):
        """The value at ``path`` has the shape of ``template`` (tables, lists, bools,
        numbers and strings, as horn wrote them): the same keys but for the ``optional``
        ones, the same list lengths, whole numbers from 0 to ``high`` where it has whole
        numbers, finite numbers, bools and strings where it has those."""
        if isinstance(template, dict):
            table = self.typed(path, dict, "a table")
            for key, sub in template.items():
                if key in table or key not in optional:
                    self.like(sub, (*path, key), optional, high)
        elif isinstance(template, list):
            expected = f"a list of {len(template)} values"
            if len(self.typed(path, list, expected)) != len(template):
                self.fail(path, expected, self.value(path, expected))
            for i, sub in enumerate(template):
                self.like(sub, (*path, i), optional, high)
        elif isinstance(template, bool):
            self.typed(path, bool, "true or false")
        elif isinstance(template, int):
            self.count(path, high=high)
        elif isinstance(template, float):
            self.number(path)
        else:
            self.typed(path, str, "a string")
