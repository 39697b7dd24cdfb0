"""What the benchmarks say about the machine they ran on, and how they wait for it to be quiet.

Every script in bench/ prints the same description (CPUs, CPU model, kernel,
each Python build that took part and how it was compiled, the peers' versions)
and measures the same "other CPU": the CPU
time that every *other* user-space process used over a run (`CpuWatch`, from
``/proc/<pid>/stat``: everything except the load generator, the servers and
their children). A figure taken while something else was busy measures a
shared machine, so scripts flag it, and `wait_until_quiet` lets a run start
only once the load average has settled. `add_run_options` and `begin_run` are
how the scripts start: the options ``--server-python``, ``--quiet-load`` and
``--quiet-wait``, then the wait and the description (`run_context`).

The kernel's own work (kernel threads such as writeback and ksoftirqd, and
interrupts that hit an idle CPU) is measured apart, as what ``/proc/stat``
says was busy minus every user-space process's share: it is mostly disk and
network work the systems under test cause, not a sign of a crowded machine.
(With tick-based accounting, a softirq that interrupts a process is charged
to that process, so most loopback TCP work shows up as client or server CPU.)
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CpuWatch",
    "add_run_options",
    "begin_run",
    "command_line",
    "context_lines",
    "dbqueue_origin",
    "describe_machine",
    "load_average",
    "machine_busy_seconds",
    "peer_versions",
    "python_build",
    "python_description",
    "run_context",
    "wait_for_idle_cpu",
    "wait_until_quiet",
]

_DESCRIBE_PYTHON = (
    "import os, platform, sys, sysconfig; "
    "v = sysconfig.get_config_vars(); "
    "print(sys.executable, os.path.realpath(sys.executable), platform.python_implementation(), "
    "platform.python_version(), platform.python_compiler(), "
    "*(str(v.get(k) or '').replace('|', ' ') for k in "
    "('CONFIG_ARGS', 'PY_CFLAGS', 'PY_CFLAGS_NODIST', 'PY_LDFLAGS_NODIST')), sep='|')"
)


def python_build(python: str | None = None) -> dict[str, Any]:
    """How ``python`` (default: this interpreter) was built, as far as it can say.

    Returns ``executable``, ``binary`` (the real file), ``implementation``,
    ``version``, ``compiler``, ``pgo`` and ``lto`` (True, False, or None where
    the build cannot tell), ``opt`` (the ``-O`` level of ``PY_CFLAGS``),
    ``package`` (the Debian package that owns the binary, "" for none) and
    ``build``, all of that in a few words.

    PGO and LTO are read from ``sysconfig``: ``--enable-optimizations`` /
    ``--with-lto`` in ``CONFIG_ARGS``, ``-fprofile-use`` / ``-flto`` in the
    compiler and linker flags. A build from source (pyenv, python.org's
    configure) records them there, so their absence means "no". Debian's
    ``python3.X`` runs both outside configure and records neither, so for a
    binary a Debian package owns the answer is None, with the package named.
    """
    command = [python or sys.executable, "-c", _DESCRIBE_PYTHON]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False).stdout.strip().split("|")
    except (OSError, subprocess.SubprocessError):
        out = []
    if len(out) != 9:
        return {"executable": python or sys.executable, "build": "?", "pgo": None, "lto": None, "package": ""}
    executable, binary, implementation, version, compiler, config_args, cflags, cflags_nodist, ldflags_nodist = out
    flags = f"{cflags} {cflags_nodist} {ldflags_nodist}"
    pgo = "--enable-optimizations" in config_args or "-fprofile-use" in flags
    lto = "--with-lto" in config_args or "-flto" in flags
    levels = [word for word in cflags.split() if word.startswith("-O")]
    package = _debian_package(binary)
    if pgo or lto or not package:
        build = f"PGO {'yes' if pgo else 'no'}, LTO {'yes' if lto else 'no'} (sysconfig)"
        found: tuple[bool | None, bool | None] = (pgo, lto)
    else:
        build = f"PGO and LTO not recorded in sysconfig: Debian package {package}, built with both outside configure"
        found = (None, None)
    if levels:
        build += f", {levels[-1]}"
    return {
        "executable": executable,
        "binary": binary,
        "implementation": implementation,
        "version": version,
        "compiler": compiler,
        "pgo": found[0],
        "lto": found[1],
        "opt": levels[-1] if levels else "",
        "package": package,
        "build": build,
    }


def _debian_package(path: str) -> str:
    """``name version`` of the Debian package that owns ``path`` (or the library it links), "" for none."""
    if not shutil.which("dpkg-query"):
        return ""
    try:
        owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True, timeout=10, check=False)
        if owner.returncode:
            return ""
        name = owner.stdout.split(":", 1)[0].strip()
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{name} {version}".strip()


def python_description(python: str | None = None) -> str:
    """``path -> binary (CPython 3.X.Y, compiler; build)`` for ``python`` (default: this interpreter).

    The build says whether it used PGO and LTO (`python_build`).
    """
    build = python_build(python)
    if "binary" not in build:
        return f"{build['executable']} (?)"
    return (
        f"{build['executable']} -> {build['binary']} ({build['implementation']} {build['version']}, "
        f"{build['compiler']}; {build['build']})"
    )


def peer_versions() -> dict[str, str]:
    """The peers' and the load generator's libraries' versions, as each reports itself ("not installed" if absent).

    redis-server's whole ``--version`` line (its allocator matters), beanstalkd's ``-v``,
    uvloop and hiredis.
    """
    versions: dict[str, str] = {}
    for name, command in (("redis-server", ["redis-server", "--version"]), ("beanstalkd", ["beanstalkd", "-v"])):
        if shutil.which(command[0]) is None:
            versions[name] = "not installed"
            continue
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            versions[name] = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"
        except (OSError, subprocess.SubprocessError):
            versions[name] = "?"
    for module in ("uvloop", "hiredis"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            versions[module] = "not installed"
    return versions


def dbqueue_origin() -> str:
    """Which dbqueue code runs: its version, and the commit (a `snapshot` export's, or the working tree's)."""
    import dbqueue

    source = Path(dbqueue.__file__).resolve().parent.parent  # .../src
    revision = source.parent / "REVISION"
    if revision.is_file():
        return f"{dbqueue.__version__}, snapshot of {revision.read_text().strip()} ({source})"
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %cI"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return f"{dbqueue.__version__} ({source})"
    if head.returncode:
        return f"{dbqueue.__version__} ({source}, not a git checkout)"
    changes = " with uncommitted changes under src/" if dirty.stdout.strip() else ""
    return f"{dbqueue.__version__}, git {head.stdout.strip()}{changes} ({source})"


_NOTABLE_FLAGS = ("avx2", "avx512f", "hypervisor")  # CPU flags worth a line: vector width, and whether it is a VM


def describe_machine() -> dict[str, Any]:
    """nproc (usable CPUs), CPU count, model, clock and notable flags, memory, kernel, this interpreter."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
            if line.strip() == "":
                break  # the first processor's lines are enough
    except OSError:
        pass
    model = cpu.get("model name", "?")
    flags = set(cpu.get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration, ValueError):
        memory = 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "cpu_mhz": cpu.get("cpu MHz", "?"),
        "cpu_cache": cpu.get("cache size", "?"),
        "cpu_flags": [flag for flag in _NOTABLE_FLAGS if flag in flags],
        "memory_bytes": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_build": python_description(),
    }


def machine_busy_seconds() -> float:
    """CPU time all processors have spent busy since boot, from /proc/stat (0.0 where there is none)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


_PF_KTHREAD = 0x00200000  # task flag of kernel threads


def _user_processes() -> dict[int, tuple[int, float]]:
    """Every user-space process: pid -> (parent pid, CPU seconds of it and the children it has waited for)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # gone
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[6]) & _PF_KTHREAD:
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]) / tick)
    return out


class CpuWatch:
    """CPU used over a window by every user-space process outside ``ours`` (and their descendants), and by the kernel.

    Call `start`, then `stop`; ``other_seconds`` and ``kernel_seconds`` hold the
    result. ``ours`` is a function returning the pids to leave out (the load
    generator, whose children the servers are), asked at both ends.

    Each process's figure includes the children it has reaped, so a test
    runner's short-lived subprocesses count. That figure jumps by a child's
    whole life when it is reaped, so the CPU a vanished process had used
    before the window is taken off again; a process born in the window counts
    in full. The result is clamped at zero, never negative.
    """

    def __init__(self, ours: Any) -> None:
        self.ours = ours
        self.other_seconds = 0.0
        self.kernel_seconds = 0.0
        self._before: dict[int, float] = {}
        self._busy = 0.0
        self._ours_before = 0.0

    def _split(self) -> tuple[dict[int, float], float]:
        processes = _user_processes()
        excluded = set(self.ours())
        others: dict[int, float] = {}
        ours_total = 0.0
        for pid, (_ppid, seconds) in processes.items():
            ancestor, hops = pid, 0
            while ancestor not in excluded and ancestor in processes and hops < 64:
                ancestor, hops = processes[ancestor][0], hops + 1
            if ancestor in excluded:
                ours_total += seconds
            else:
                others[pid] = seconds
        return others, ours_total

    def start(self) -> None:
        self._busy = machine_busy_seconds()
        self._before, self._ours_before = self._split()

    def stop(self) -> None:
        busy = machine_busy_seconds() - self._busy
        after, ours_after = self._split()
        before = self._before
        grown = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        vanished = sum(seconds for pid, seconds in before.items() if pid not in after)
        self.other_seconds = max(0.0, grown - vanished)
        self.kernel_seconds = max(0.0, busy - self.other_seconds - (ours_after - self._ours_before))


def load_average() -> float:
    """The 1-minute load average (0.0 where there is none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def wait_until_quiet(threshold: float, patience: float, say: Any = print) -> bool:
    """Wait until the 1-minute load average is at most ``threshold``, for up to ``patience`` seconds.

    Returns whether it got there; ``say`` hears what is going on. A threshold
    of 0 or less means "do not wait".
    """
    if threshold <= 0:
        return True
    deadline = time.monotonic() + patience
    load = load_average()
    if load <= threshold:
        return True
    say(f"load average {load:.2f} > {threshold}: waiting up to {patience:.0f} s for the machine to be quiet")
    while time.monotonic() < deadline:
        time.sleep(10)
        load = load_average()
        if load <= threshold:
            say(f"load average {load:.2f}: starting")
            return True
    say(f"load average still {load:.2f} after {patience:.0f} s: starting anyway (figures will say so)")
    return False


def command_line() -> str:
    """This process's command line as one could paste it (with PYTHONPATH when it is set, e.g. to a snapshot)."""
    python = sys.executable
    relative = os.path.relpath(python)
    if not relative.startswith(".."):
        python = relative
    command = shlex.join([python, *sys.argv])
    path = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={shlex.quote(path)} {command}" if path else command


def wait_for_idle_cpu(patience: float, threshold: float = 0.25, window: float = 10.0, say: Any = print) -> float:
    """Wait until other processes (all but this one and its children) use at most ``threshold`` of a core
    over ``window`` seconds, or ``patience`` seconds pass; return the last share seen.

    Unlike the load average, this ignores our own servers, so it works between runs.
    """
    deadline = time.monotonic() + patience
    while True:
        watch = CpuWatch(lambda: [os.getpid()])
        watch.start()
        time.sleep(window)
        watch.stop()
        busy = watch.other_seconds / window
        if busy <= threshold or time.monotonic() >= deadline:
            say(f"other processes use {busy:.0%} of a core: going on")
            return busy


def run_context(server_python: str | None = None) -> dict[str, Any]:
    """Everything a result needs beside it: date, command, machine, load, both Python builds, which dbqueue."""
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": describe_machine(),
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "server_python": python_description(server_python),
        "peers": peer_versions(),
        "dbqueue": dbqueue_origin(),
    }


def context_lines(context: dict[str, Any]) -> list[str]:
    """`run_context` as the lines every script prints before its figures.

    The ``dbqueue:`` line comes last, and only while the context holds it (compare.py
    moves it into its own line of versions).
    """
    machine = context["machine"]
    lines = [
        f"date: {context['date']}",
        f"command: {context['command']}",
        (
            f"machine: nproc {machine['nproc']} (of {machine['cpu_count']}), {machine['cpu_model']}"
            f" ({machine.get('cpu_mhz', '?')} MHz, cache {machine.get('cpu_cache', '?')}, flags: "
            f"{' '.join(machine.get('cpu_flags', [])) or 'none of ' + ' '.join(_NOTABLE_FLAGS)}), "
            f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['kernel']}; "
            f"load average at the start {context['load']}"
        ),
        f"load generator: {machine['python_build']}",
        f"dbqueue server: {context['server_python']}",
    ]
    if "peers" in context:
        lines.append("peers: " + "; ".join(f"{name}: {version}" for name, version in context["peers"].items()))
    if "dbqueue" in context:
        lines.append(f"dbqueue: {context['dbqueue']}")
    return lines


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--server-python``, ``--quiet-load`` and ``--quiet-wait``: what `begin_run` reads."""
    parser.add_argument(
        "--server-python", metavar="PATH", help="interpreter for the dbqueue server (default: this one)"
    )
    parser.add_argument(
        "--quiet-load", type=float, default=0.7, help="wait for a 1-minute load average this low (0: no)"
    )
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="seconds to wait for it at most")


def begin_run(args: argparse.Namespace, say: Any = print) -> dict[str, Any]:
    """Wait until the machine is quiet (``args.quiet_load``, ``args.quiet_wait``), then return its `run_context`.

    ``args`` holds the options `add_run_options` adds (a script may word their help its own way);
    ``say`` hears about the wait. Printing the context (`context_lines`) is left to the caller.
    """
    wait_until_quiet(args.quiet_load, args.quiet_wait, say)
    return run_context(args.server_python)
