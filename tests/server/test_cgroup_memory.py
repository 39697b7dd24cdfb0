"""The memory defaults (`Limits.memory_budget`, `Limits.max_output_total`) in a memory-limited cgroup.

A container's machine memory is the host's: sized from it alone, the budget lets the kernel kill the
server before a send is ever refused. `cgroup_memory_limit` reads the cgroup's limit (v2 ``memory.max``,
v1 ``memory.limit_in_bytes``) from the process's own cgroup up to the root; the defaults take the
smaller of it and the machine's memory. The reading is checked on fake cgroup trees; where this machine
lets a test make a cgroup (root, a writable memory hierarchy), a child process put in one with a limit
is checked to size its defaults from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dbqueue.server import limits
from dbqueue.server.limits import cgroup_memory_limit

GIB = 1 << 30
V1_NO_LIMIT = 9223372036854771712  # what a v1 memory cgroup without a limit reads as


def fake_root(tmp_path: Path, own: str, files: dict[str, str]) -> str:
    """A filesystem root whose /proc/self/cgroup says ``own`` and which holds ``files`` (path -> text)."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(own)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text + "\n")
    return str(tmp_path)


def test_v2_reads_memory_max_of_the_own_cgroup(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/system.slice/dbqueue.service\n",
        {
            "sys/fs/cgroup/system.slice/dbqueue.service/memory.max": str(GIB),
            "sys/fs/cgroup/system.slice/memory.max": "max",
        },
    )
    assert cgroup_memory_limit(root) == GIB


def test_v2_max_everywhere_means_no_limit(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path, "0::/a/b\n", {"sys/fs/cgroup/a/b/memory.max": "max", "sys/fs/cgroup/a/memory.max": "max"}
    )
    assert cgroup_memory_limit(root) is None


def test_a_parent_s_lower_limit_binds(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {"sys/fs/cgroup/kubepods/pod1/c1/memory.max": str(4 * GIB), "sys/fs/cgroup/kubepods/pod1/memory.max": str(GIB)},
    )
    assert cgroup_memory_limit(root) == GIB


def test_v1_container_that_sees_its_own_cgroup_as_the_root(tmp_path: Path) -> None:
    # Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the host's path, which the
    # container's mount does not have; its limit is at the mount's root.
    root = fake_root(
        tmp_path,
        "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
        {"sys/fs/cgroup/memory/memory.limit_in_bytes": str(512 << 20)},
    )
    assert cgroup_memory_limit(root) == 512 << 20


def test_v1_controllers_mounted_together_and_the_no_limit_value(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path, "3:cpu,memory:/job\n", {"sys/fs/cgroup/memory/job/memory.limit_in_bytes": str(V1_NO_LIMIT)}
    )
    assert cgroup_memory_limit(root) == V1_NO_LIMIT  # as big as it says: the machine's memory is smaller


def test_no_cgroup_file_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(str(tmp_path)) is None
    assert cgroup_memory_limit(fake_root(tmp_path, "0::/x\n", {"sys/fs/cgroup/x/memory.max": "garbage"})) is None


def test_the_defaults_take_the_smaller_of_the_machine_and_the_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: 256 << 20)
    assert limits._physical_memory() == min(machine, 256 << 20)
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: V1_NO_LIMIT)
    assert limits._physical_memory() == machine
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: None)
    assert limits._physical_memory() == machine


def own_memory_cgroup() -> tuple[Path, str] | None:
    """This process's memory cgroup directory and the name of its limit file, or None if there is none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + path), "memory.limit_in_bytes"
        if number == "0" and not controllers and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup" + path), "memory.max"
    return None


def test_a_process_in_a_memory_limited_cgroup_sizes_its_defaults_from_the_limit() -> None:
    found = own_memory_cgroup()
    if found is None:
        pytest.skip("no memory cgroup here")
    parent, limit_file = found
    cgroup = parent / f"dbqueue-test-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        try:
            (cgroup / limit_file).write_text(str(256 << 20))
        except OSError as exc:
            pytest.skip(f"cannot set a memory limit here: {exc}")
        # The child joins the cgroup before Python starts, so the defaults it computes at import see it.
        script = "from dbqueue import Limits; limits = Limits(); print(limits.memory_budget, limits.max_output_total)"
        shell = f'echo $$ > {cgroup / "cgroup.procs"} && exec "$0" -c "$1"'
        try:
            done = subprocess.run(
                ["sh", "-c", shell, sys.executable, script], capture_output=True, text=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the child did not finish")
        if done.returncode != 0 and "cgroup.procs" in done.stderr:
            pytest.skip(f"cannot move a process into a cgroup here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(128 << 20), str(32 << 20)], done.stdout
    finally:
        cgroup.rmdir()  # empty again: the child has exited
