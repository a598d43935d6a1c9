"""horn's argument parser: ``--debug`` accepted on every (sub)command, and help text
without the reST markup of the docstrings it is taken from."""

import argparse
import re

_ROLE = re.compile(r":[\w.:-]+:(`{1,2})~?([^`]+?)\1")  # :func:`~x.y` -> x.y (~ is Sphinx's)
_CODE = re.compile(r"(`{1,2})([^`]+?)\1")  # ``x`` and `x` -> x, a ~ inside kept


def plain(text):
    """``x``, `x` and :role:`x` (also :role:`~x`) -> x: help is read in a terminal."""
    return _CODE.sub(r"\2", _ROLE.sub(r"\2", text))


class PlainHelpFormatter(argparse.HelpFormatter):
    def _format_text(self, text):
        return super()._format_text(plain(text))

    def _expand_help(self, action):
        return plain(super()._expand_help(action))

    def _format_usage(self, usage, actions, groups, prefix):
        return plain(super()._format_usage(usage, actions, groups, prefix))


class HornArgumentParser(argparse.ArgumentParser):
    """Every parser, and every subparser made from it (argparse makes them of the parent's
    class), takes ``--debug``; it is left unset where not given, so a subcommand's parser
    never resets what the main one parsed (read it with ``getattr(args, "debug", False)``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", PlainHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors (accepted anywhere on the line)",
        )
