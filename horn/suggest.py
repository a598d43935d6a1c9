"""The "did you mean" every unknown-name message ends with, in one place."""

import difflib


def did_you_mean(name, known):
    """`` (did you mean 'x'?)`` for the closest of ``known`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
