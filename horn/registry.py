"""Name -> layer class. ``horn.layers`` fills it; the core only looks names up.

A job names a built-in by its registered name (``"dense"``) or a user's own
layer as ``"package.module:ClassName"``, which is imported — never evaluated.
"""

import difflib
import importlib
import re

from horn.errors import HornError

_LAYERS = {}
_CUSTOM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def register_layer(name):
    """Class decorator: make a layer (or loss) available to job files as ``name``."""
    def wrap(cls):
        _LAYERS[name] = cls
        cls.type_name = name
        return cls
    return wrap


def registered():
    importlib.import_module("horn.layers")  # the built-ins register themselves on import
    return dict(_LAYERS)


def resolve(type_name, where="layer"):
    """The class for a job's ``type``; a clear error for anything unknown."""
    from horn.layer import Layer

    if not isinstance(type_name, str):
        raise HornError(f"{where}: expected a layer type name (string), found {type_name!r}")
    if ":" in type_name:
        if not _CUSTOM.fullmatch(type_name):  # match() would let a trailing newline through
            raise HornError(f"{where}: custom layers are named 'package.module:ClassName', "
                            f"found {type_name!r}")
        module, cls_name = type_name.split(":")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as exc:
            raise HornError(f"{where}: cannot import {type_name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise HornError(f"{where}: {type_name!r} is not a horn.Layer subclass")
        return cls
    layers = registered()
    if type_name not in layers:
        close = difflib.get_close_matches(type_name, layers, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HornError(f"{where}: unknown layer type {type_name!r}{hint}; "
                        f"known: {', '.join(sorted(layers))}")
    return layers[type_name]
