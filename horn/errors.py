"""User-facing errors: one line, exit code 2, no traceback unless --debug."""


class HornError(Exception):
    """A problem with the user's input (job, data, hostfile, model file).

    The CLI prints ``horn: error: <message>`` and exits with code 2. The message
    should name the file/line/key, what was expected and what was found.
    """

    exit_code = 2

    def __init__(self, message=""):
        # one line whatever a message quotes: a file name may hold "\r" or "\n"
        if isinstance(message, str):
            message = message.replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message)


def in_file(source, exc):
    """``exc`` (a HornError) prefixed with the job file it came from, unless it names it."""
    text = str(exc)
    return exc if text.startswith(f"{source}") else type(exc)(f"{source}: {text}")


def one_line(exc):
    """The exception's message and notes (which layer raised) on one line."""
    return " ".join(
        [part for part in str(exc).split("\n") if part]
        + [f"({note})" for note in getattr(exc, "__notes__", [])]
    )


def blamed(exc, where):
    """``exc`` with a note saying where in the user's code it was raised ("in forward of
    layer 2 (mine)"), shown on the failure line of every rank. A ``sys.exit`` there
    becomes a RuntimeError: a layer or module must not end a job with its exit code
    (0 would read as success)."""
    if isinstance(exc, SystemExit):
        exc = RuntimeError(f"sys.exit({exc.code!r}) was called")
    exc.add_note(where)
    return exc


class DivergenceError(HornError):
    """Training produced NaN/Inf; the message names the step and the layer."""

    exit_code = 3


class Preempted(Exception):
    """``horn.run`` stopped by a signal (SIGTERM, SIGINT, SIGUSR1) at a round boundary,
    with a checkpoint: not a failure of the job, so not a HornError. ``run_dir`` (None
    on ranks other than 0) is what ``horn run --resume`` continues."""

    def __init__(self, step, run_dir):
        self.step, self.run_dir = step, run_dir
        at = f" at step {step}" if step is not None else ""
        where = run_dir if run_dir else "RUN_DIR (rank 0's Preempted names it)"
        super().__init__(
            f"horn.run: stopped by a signal{at} with a checkpoint; continue with: "
            f"horn run --resume {where}"
        )
