"""An uncaught exception on any rank aborts the whole job.

Without this, one rank dying with a Python exception leaves the others blocked
in their next collective forever (the idea of ``python -m mpi4py``'s run
wrapper). Each failing rank prints one line naming itself, then calls
``MPI.COMM_WORLD.Abort`` so Open MPI tears down every other rank within seconds.
"""

import os
import sys
import traceback

from horn.errors import HornError, one_line
from horn.launch import report_abort

_context = {"group": None, "worker": None, "debug": False}


def set_rank_context(group, worker):
    """Remember this rank's place in the layout so failure lines can name it."""
    _context["group"], _context["worker"] = group, worker


def set_debug(flag):
    """Print tracebacks along with the one-line failure message (also: HORN_DEBUG=1)."""
    _context["debug"] = bool(flag)


def _debug():
    return _context["debug"] or os.environ.get("HORN_DEBUG") == "1"


def _multi_rank_world():
    """COMM_WORLD if MPI is running with more than one rank, else None.

    Looks in sys.modules instead of importing so that single-process commands
    never initialise MPI just to report an error.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    world = mpi.COMM_WORLD
    return world if world.Get_size() > 1 else None


def _who(rank):
    """``rank 3 (host node2, group 1, worker 1)``: where to look, on a cluster."""
    place = [f"host {sys.modules['mpi4py.MPI'].Get_processor_name()}"]
    if _context["group"] is not None:
        place += [f"group {_context['group']}", f"worker {_context['worker']}"]
    return f"rank {rank} ({', '.join(place)})"


OUT_OF_MEMORY_EXIT = 2


def out_of_memory(exc):
    """The one-line reason for a MemoryError (numpy's names the array it could not
    allocate; the model's note names the layer): what ran out and what to try."""
    text = one_line(exc)
    return (
        f"memory ran out{f' ({text})' if text else ''}; try a smaller train.batch_size, "
        f"a smaller model, or fewer evaluation samples (the validation and test sets are "
        f"evaluated up to 2,048 rows at a time), and see horn validate's memory estimate "
        f"for the job (--debug shows the traceback)"
    )


def _abort(world, exc):
    """Print the one-line reason (plus traceback in debug mode), then abort every rank."""
    who = _who(world.Get_rank())
    text = one_line(exc)
    if isinstance(exc, HornError):
        line, code = f"horn: error: {who}: {text}", exc.exit_code
    elif isinstance(exc, MemoryError):
        line, code = f"horn: error: {who}: {out_of_memory(exc)}", OUT_OF_MEMORY_EXIT
    else:
        line, code = f"horn: {who} failed: {type(exc).__name__}: {text}", 1
    if _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    abort_job(world, line, code)


def abort_job(world, line, code):
    """The one way a rank stops the whole job: its one-line reason on stderr and in its
    launch report (horn launch names it), then ``Abort`` of every rank."""
    print(line, file=sys.stderr, flush=True)
    report_abort(world.Get_rank(), line, code)
    world.Abort(code)


def install_abort_hook():
    """Make an uncaught exception on any rank of a multi-rank job abort the job."""
    previous = sys.excepthook

    def hook(etype, exc, tb):
        world = _multi_rank_world()
        if world is None:
            previous(etype, exc, tb)
        else:
            _abort(world, exc)

    sys.excepthook = hook


def run_guarded(fn, *, debug=False):
    """Run a CLI main; return its result, or the HornError's exit code.

    Single rank: a HornError prints ``horn: error: MESSAGE`` and returns its
    exit code (2, or 3 for divergence); a MemoryError prints ``horn: error: memory
    ran out ...`` (what to try) and returns 2; any other exception (a user layer's
    bug, with the note naming the layer) prints ``horn: error: TYPE: MESSAGE`` and
    returns 1, as a rank of a multi-rank job does. Several ranks: any exception
    prints one line naming the rank and its host and aborts the job (exit code 2/3
    for HornError, 2 for MemoryError, 1 otherwise). The traceback comes too only
    with --debug (or HORN_DEBUG=1).
    """
    if debug:
        set_debug(True)
    try:
        return fn()
    except KeyboardInterrupt:  # Ctrl-C (a run checkpoints first: horn.resume) ends quietly
        if _multi_rank_world() is not None:
            raise
        print("horn: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        world = _multi_rank_world()
        if world is not None:
            _abort(world, exc)
        if isinstance(exc, HornError):
            message, code = str(exc), exc.exit_code
        elif isinstance(exc, MemoryError):
            message, code = out_of_memory(exc), OUT_OF_MEMORY_EXIT
        else:
            message = f"{type(exc).__name__}: {one_line(exc)} (--debug shows the traceback)"
            code = 1
        if _debug():
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"horn: error: {message}", file=sys.stderr, flush=True)
        return code
