"""User-facing errors: one line, exit code 2, no traceback unless --debug."""


class HornError(Exception):
    """A problem with the user's input (job, data, hostfile, model file).

    The CLI prints ``horn: error: <message>`` and exits with code 2. The message
    should name the file/line/key, what was expected and what was found.
    """

    exit_code = 2


class DivergenceError(HornError):
    """Training produced NaN/Inf; the message names the step and the layer."""

    exit_code = 3
