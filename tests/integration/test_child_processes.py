"""Children started by harstream (services, the broker, the model server) die with the
process that started them, and starting one never runs fork handlers.

The second matters because gRPC registers a ``pthread_atfork`` handler that waits for its
own threads: a test process that had called the model server hung for good inside
``fork()`` when it started the next one. Started without a ``preexec_fn``, Python spawns
with ``vfork()``, which runs no fork handlers (neither Python's nor gRPC's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from services.common.processes import ServiceProcess


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _executable(pid: int) -> str:
    """The file process ``pid`` runs ('' once it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def test_starting_a_child_runs_no_fork_handlers(tmp_path: Path) -> None:
    calls: list[str] = []
    os.register_at_fork(before=lambda: calls.append("before"))
    child = ServiceProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], {}, tmp_path / "s.log"
    ).start()
    try:
        assert child.running()
        assert calls == []  # Python runs its fork handlers only around a real fork()
    finally:
        child.stop(timeout_s=5)


def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent_code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path.cwd())!r})
        from pathlib import Path
        from services.common.processes import ServiceProcess
        child = ServiceProcess(
            "sleeper",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            {{}},
            Path({str(tmp_path / "child.log")!r}),
        ).start()
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    # setpriv sets the death signal, then execs the program: kill the parent only once the
    # child runs its program (a parent killed in between leaves an orphan: see die_with_parent).
    # Wait for the executable to be Python's, not for the command line: setpriv's own command
    # line holds the program's arguments (a CI run saw it there, killed the parent before
    # setpriv's prctl, and the child outlived it).
    python = os.path.realpath(sys.executable)
    deadline = time.monotonic() + 20
    while _executable(child_pid) != python and _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling /proc: there is no event for another process's exec
    assert _alive(child_pid) and _executable(child_pid) == python
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc: there is no event for another process's exit
    assert not _alive(child_pid), "the child outlived its killed parent"
