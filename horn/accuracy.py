"""Classification accuracy, in one place: every report of it means the same thing."""

import math


def accuracy(outputs, labels):
    """The fraction of rows whose largest output is at the label's index (NaN for no
    rows: an empty split has no accuracy, not a perfect one)."""
    if len(labels) == 0:
        return math.nan
    return float((outputs.argmax(axis=1) == labels).mean())
