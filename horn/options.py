"""Typed layer options: a layer's constructor annotations are its option types.

``Dense(units: int, bias: bool = True)`` declares that ``units`` takes an integer
and ``bias`` true or false; a job value of another type (``units = true``,
``bias = "no"``) is refused before the layer is constructed, instead of being
coerced silently. bool is not an int, an int is accepted where a float is
expected, and an unannotated option is passed through as it is. User layers get
the same check from their own annotations.
"""

import collections.abc
import inspect
import math
import numbers
import types
import typing

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
INT64_MAX = 2**63 - 1  # what the kernels' integers hold (Numba types a larger one as nothing)


def option_types(cls):
    """``{option: (annotation, default)}`` of a layer class's constructor (the
    annotation is ``inspect.Parameter.empty`` when the option has none)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a string annotation naming something unresolvable: use the raw ones
        hints = {}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {
        p.name: (hints.get(p.name, p.annotation), p.default)
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def matches(value, kind):
    """Whether ``value`` is of the option type ``kind`` (an annotation)."""
    if kind is inspect.Parameter.empty or kind is typing.Any:
        return True
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if kind is None or kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches, value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if origin is collections.abc.Callable or kind is collections.abc.Callable:
        return callable(value)
    return isinstance(value, origin or kind) if isinstance(origin or kind, type) else True


def integers_in(value):
    """Every int in an option value (lists and tables included)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        yield int(value)
    elif isinstance(value, (list, tuple, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from integers_in(item)


def storable(value):
    """Whether a model file's JSON header can hold ``value`` and give it back as it is:
    None, a bool, an int, a finite float, a string, or a list (tuple) or string-keyed
    table of them. numpy scalars and callables cannot be written; NaN would not be read."""
    if value is None or isinstance(value, (bool, int, str)):
        return type(value) in (type(None), bool, int, str)
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if type(value) in (list, tuple):
        return all(map(storable, value))
    if type(value) is dict:
        return all(isinstance(k, str) and storable(v) for k, v in value.items())
    return False


def describe(kind):
    """An option type as a message shows it: ``int``, ``int | list[int]``, ``bool``."""
    if kind is inspect.Parameter.empty:
        return "any value"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if kind is None or kind is type(None):
        return "None"
    if origin is collections.abc.Callable or kind is collections.abc.Callable:
        return "callable"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(kind, "__name__", str(kind))


def check_options(cls, arguments):
    """TypeError naming the first option of ``arguments`` (name -> value) whose value is
    not of its annotated type; the caller names the layer."""
    declared = option_types(cls)
    for name, value in arguments.items():
        kind = declared.get(name, (inspect.Parameter.empty,))[0]
        if not matches(value, kind):
            raise TypeError(f"option {name!r}: expected {describe(kind)}, found {value!r}")
        if any(abs(v) > INT64_MAX for v in integers_in(value)):
            raise TypeError(
                f"option {name!r}: expected integers within int64 range "
                f"(|x| <= 2**63 - 1), found {value!r}"
            )
        if kind is float and abs(value) > FLOAT32_MAX:  # layers compute in float32
            raise TypeError(
                f"option {name!r}: expected float within float32 range "
                f"(|x| <= {FLOAT32_MAX:.4g}), found {value!r}"
            )


def layer_table():
    """``horn layers``: every registered layer (built-in or imported) with its options."""
    from horn.registry import registered

    lines = []
    for name, cls in sorted(registered().items()):
        options = []
        for option, (kind, default) in option_types(cls).items():
            text = option if kind is inspect.Parameter.empty else f"{option}: {describe(kind)}"
            options.append(text if default is inspect.Parameter.empty else f"{text} = {default!r}")
        where = f"{cls.__module__}:{cls.__qualname__}"
        lines.append(f"{name:<22} {', '.join(options) or '(no options)'}  [{where}]")
    return "\n".join(lines)


def print_layer_table():
    print(layer_table())
    return 0
