"""Top frames of py-spy profiles taken by ``benchmarks.capacity --profile-at N``.

``python -m benchmarks.capacity_profile DIR [--top 12]``

Reads every ``DIR/<service>.txt`` (py-spy ``--format raw``: one collapsed stack per line,
``frame;frame;...;leaf COUNT``; py-spy records only threads that were running, not idle)
and prints per service: the functions where the samples were taken (self) and the
functions the samples were under (inclusive), as shares of the service's busy samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: Leaf frames of a thread that waits rather than runs. With ``--nonblocking`` py-spy cannot
#: always tell an idle thread, so these are dropped here: the event loop's epoll, and the
#: queue waits of executor and producer-bridge threads (lines of Python 3.11.7; any line of
#: the bridge's ``_run``, whose only blocking call is its queue wait). On uvloop the loop
#: is compiled code under ``Runner.run``: a sample whose leaf is ``Runner.run`` waits in
#: epoll or runs libuv's own code (its socket reads, its callback dispatch), which ``perf``
#: put at 3 % of ingest's CPU plus the kernel's share of those reads; the rest of the
#: 49-62 % of "busy" samples such leaves took in earlier tables was the idle wait.
IDLE_LEAVES = re.compile(
    r"^(EpollSelector\.select|PollSelector\.select|select) \(.*selectors\.py"
    r"|^Runner\.run \(.*asyncio/runners\.py"
    r"|^_worker \(.*concurrent/futures/thread\.py:81\)"
    r"|^_DaemonWorker\._run \(.*services/ingest/producer\.py:\d+\)"  # its one loop: the queue wait
    r"|^(Condition|Event|Semaphore)\.wait \("
    r"|^(Queue|SimpleQueue)\.get \("
    r"|^Thread\.join \("
)

#: Frames that every busy sample of a thread sits under (entry points, the event loop's
#: dispatch): left out of the inclusive list, which is there to show what divides the work.
PLUMBING = re.compile(
    r"\((click/|<frozen runpy>|asyncio/(runners|base_events|events)\.py|threading\.py"
    r"|services/cli\.py|services/\w+/cli\.py|mode/worker\.py|faust/cli/|mode/services\.py"
    r"|multiprocessing/|<string>)"
    r"|^spawn_main\("
)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``send (kafka/producer/sender.py:123)`` -> ``send (kafka/producer/sender.py)``: lines
    dropped so one function's samples add up; paths shortened to their package part."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def top_frames(lines: Iterable[str]) -> tuple[int, int, Counter[str], Counter[str]]:
    """``(busy samples, idle samples, self samples per function, inclusive samples per
    function)``, over busy samples only (see :data:`IDLE_LEAVES`)."""
    total = idle = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = [f.strip() for f in stack.split(";") if f.strip()]
        if raw and IDLE_LEAVES.search(raw[-1]):
            idle += count
            continue
        frames = [frame_name(f) for f in raw]
        # py-spy puts the process and thread as the first frames: keep real frames.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, idle, own, inclusive


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity_profile")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    for path in sorted(args.directory.glob("*.txt")):
        total, idle, own, inclusive = top_frames(path.read_text().splitlines())
        print(f"\n## {path.stem}: {total} busy samples ({idle} idle left out)")
        if not total:
            continue
        print("self:")
        for name, count in own.most_common(args.top):
            print(f"  {count / total:6.1%}  {name}")
        print("inclusive:")
        shown = 0
        for name, count in inclusive.most_common():
            if PLUMBING.search(name) or shown >= args.top:
                continue
            print(f"  {count / total:6.1%}  {name}")
            shown += 1


if __name__ == "__main__":
    main()
