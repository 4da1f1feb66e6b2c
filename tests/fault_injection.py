"""``robotd train``, SIGKILLed with its actors at a chosen point of a checkpoint write.

    python -m tests.fault_injection WHEN FILE N -- ARGS...     # ARGS as for `robotd train`

``FILE`` is a resume file of the run directory (``learner.pt``, ``replay.npz``), ``N`` counts
its writes in this process (1: the first). ``WHEN`` is ``mid-write`` (half of its bytes written
under the temporary name) or ``before-rename`` (written whole, not yet renamed over ``FILE``).
The process must lead its own process group (``start_new_session=True``): the whole group is
killed, as a power cut or ``kill -9`` of the process tree would.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO, Callable

import policies.qlearning
import policies.sequence_replay
from calibration import durable

WHENS = ("mid-write", "before-rename")


def main(argv: list[str]) -> int:
    when, name, nth, sep, *train_args = argv
    if when not in WHENS or sep != "--":
        raise SystemExit(f"usage: python -m tests.fault_injection {{{'|'.join(WHENS)}}} FILE N -- ARGS...")
    if os.getpgid(0) != os.getpid():
        raise SystemExit("tests.fault_injection: start it as its own process group (it kills the whole group)")
    calls = {"n": 0}

    def due(path: Path) -> bool:
        if path.name != name:
            return False
        calls["n"] += 1
        return calls["n"] == int(nth)

    def kill_group() -> None:
        os.killpg(0, signal.SIGKILL)

    def write_synced(path: Path, write: Callable[[BinaryIO], None]) -> None:
        if when == "mid-write" and due(path.with_suffix("")):  # path: FILE.tmp
            data = io.BytesIO()
            write(data)
            with open(path, "wb") as f:
                f.write(data.getvalue()[:len(data.getvalue()) // 2])
            kill_group()
        durable.write_synced(path, write)

    def replace_synced(tmp: Path, path: Path) -> None:
        if when == "before-rename" and due(path):
            kill_group()
        durable.replace_synced(tmp, path)

    for module in (policies.qlearning, policies.sequence_replay):
        module.write_synced, module.replace_synced = write_synced, replace_synced
    from robotd.commands.train import main as train_main

    return train_main(train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
