"""``horn cluster up|run|down|exec``: the simulated cluster (horn.cluster) from the shell."""

import argparse
import signal
import subprocess

from horn import cluster as simulated
from horn.errors import HornError
from horn.launch import Launch


def _options(p, hosts):
    p.add_argument("--name", default="horn", help="cluster name (default horn)")
    if hosts:
        p.add_argument(
            "--rate",
            default=None,
            help="link bandwidth per host, e.g. 1gbit, 100mbit (default unlimited)",
        )
        p.add_argument("--slots", type=int, default=1, help="ranks per host (default 1)")


def add_cluster_commands(sub):
    """Register ``horn cluster ...`` on the top-level subparsers ``sub``."""
    cluster = sub.add_parser(
        "cluster",
        help="a simulated multi-host cluster on this machine (network namespaces; needs root)",
    )
    commands = cluster.add_subparsers(dest="cluster_command", required=True)

    def add(name, func, help_text, hosts=False, command=False, host=False):
        p = commands.add_parser(name, help=help_text)
        _options(p, hosts)
        if hosts:
            p.add_argument("hosts", type=int, help="number of hosts")
        if host:
            p.add_argument("host", type=int, help="host number (1-based)")
        if command:
            p.add_argument("command", nargs=argparse.REMAINDER, help="[OPTIONS] -- COMMAND...")
        p.set_defaults(func=func)

    add(
        "up", cmd_up, "make the hosts, hostfile and launch agent; print the mpirun line", hosts=True
    )
    add("run", cmd_run, "up, run COMMAND on every rank with mpirun, down", hosts=True, command=True)
    add("down", cmd_down, "remove everything the cluster made (also after a crash)")
    add("exec", cmd_exec, "run COMMAND inside one host", command=True, host=True)


def _command(args):
    """The COMMAND after ``--``; options between the positionals and ``--`` are ours
    (argparse's remainder would otherwise swallow them)."""
    command = args.command
    if command[:1] and command[0].startswith("-") and "--" in command:
        cut = command.index("--")
        head, command = command[:cut], command[cut + 1 :]
        own = argparse.ArgumentParser(prog=f"horn cluster {args.cluster_command}")
        _options(own, hasattr(args, "rate"))
        own.parse_args(head, namespace=args)
    if not command:
        raise HornError(
            f"horn cluster {args.cluster_command}: give the command after '--', "
            f"e.g. -- horn run jobs/digits.toml"
        )
    return command


def cmd_up(args):
    c = simulated.up(args.hosts, args.rate, args.name, args.slots)
    print(
        f"cluster {c.name}: {c.hosts} host(s) {c.hostname(1)}..{c.hostname(c.hosts)} on "
        f"{simulated.SUBNET} ({c.rate or 'unlimited'}), {c.threads_per_rank()} thread(s) per rank"
    )
    print(f"hostfile {c.hostfile}\nlaunch agent {c.agent}\nrun a job with:")
    print(simulated.mpirun_line(c))
    print(f"remove it with: horn cluster down{'' if c.name == 'horn' else ' --name ' + c.name}")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_run(args):
    command = _command(args)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # so `finally` removes the cluster
    c = simulated.up(args.hosts, args.rate, args.name, args.slots)  # removes itself if cut short
    try:
        launch = Launch(require_reports=False)  # mpirun may exit 0 after losing a host
        return launch.run(c.mpirun_argv(command, extra=launch.options), c.environment())
    except KeyboardInterrupt:
        print("horn: cluster run interrupted; removing the cluster")
        return 130
    finally:
        simulated.down(args.name)
        signal.signal(signal.SIGTERM, previous)


def cmd_down(args):
    found = simulated.down(args.name)
    made = len(found["namespaces"]) + len(found["links"])
    print(
        f"cluster {args.name}: removed {len(found['namespaces'])} namespace(s), "
        f"{len(found['links'])} link(s), {len(found['pids'])} process(es)"
        if made or found["state"]
        else f"cluster {args.name}: nothing to remove"
    )
    return 0


def cmd_exec(args):
    c = simulated.Cluster.load(args.name)
    argv = c.host_argv(args.host, _command(args))
    return subprocess.run(argv).returncode
