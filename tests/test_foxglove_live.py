"""``robotd run --foxglove``: a real WebSocket client subscribes and receives the run live; a stalled one
delays no tick.

The daemon runs as its own process against the board emulator (a real pty) with a phone
streaming over real UDP; the client is the ``websockets`` package speaking the Foxglove
WebSocket protocol (``tests/foxglove_client.py``).
"""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from daemon_harness import REPO, daemon_process
from foxglove_client import connect, receive, subscribe_all

from robotd.logs.foxglove_channels import TOPICS
from robotd.logs.logread import read_log


def test_client_subscribes_and_receives_the_run(tmp_path: Path) -> None:
    async def watch(url: str) -> tuple[set[str], dict]:
        ws = await connect(url)
        subs = await subscribe_all(ws)
        got = await receive(ws, subs, seconds=30.0)  # until the run ends and the server goes away
        await ws.close()
        return {c["topic"] for c in subs.values()}, got

    with daemon_process(tmp_path, duration_s=3.0, foxglove=True) as (_, url, log_path):
        topics, got = asyncio.run(watch(url))
    log = read_log(log_path)
    assert topics == set(TOPICS)
    latency = got["/loop/latency_us"]
    assert len(latency) > 50  # ~2.5 s of a 50 Hz loop, minus the connection set-up
    assert all(set(m) == {"parse", "fuse", "policy", "safety", "encode", "write", "tick", "rx_to_tx"}
               for _, m in latency)
    timing = [m for _, m in got["/loop/timing"]]
    seqs = [m["seq"] for m in timing]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every tick while subscribed, in order
    # The same ticks as the log: values and the loop's own clock (the log keeps times to the ns).
    row = {int(s): i for i, s in enumerate(log.seq)}
    for (t_ns, m), (_, lat) in zip(got["/loop/timing"][::25], latency[::25]):
        i = row[m["seq"]]
        assert round(m["t_monotonic_s"], 9) == log.t_s[i] and round(lat["tick"], 3) == log.tick_us[i]
    for _, tf in got["/tf"]:
        q = (tf.rotation.w, tf.rotation.x, tf.rotation.y, tf.rotation.z)
        assert math.isclose(math.fsum(v * v for v in q), 1.0, rel_tol=1e-6) and tf.child_frame_id == "torso"
    events = [m.message for _, m in got["/events"]]
    assert events[-1].startswith("summary ")  # the live stream closes with the run's summary
    assert "signal" not in events


def test_a_stalled_client_delays_no_tick(tmp_path: Path) -> None:
    """A viewer that subscribes to everything and then stops reading (a 4 kB receive buffer): its
    window stays shut and the server's send queue grows (~280 kB after 4 s, `ss -tn`); the loop
    keeps its deadlines."""
    async def stall(url: str, seconds: float) -> int:
        ws = await connect(url, rcvbuf=4096)
        subs = await subscribe_all(ws)
        await asyncio.sleep(seconds)  # never read again (websockets stops reading after 16 queued)
        ws.transport.abort()
        return len(subs)

    duration_s = 5.0
    with daemon_process(tmp_path, duration_s=duration_s, foxglove=True) as (_, url, log_path):
        assert asyncio.run(stall(url, duration_s)) == len(TOPICS)
    log = read_log(log_path)
    lateness_ms = (log.t_s - log.deadline_s) * 1e3
    assert log.summary is not None and log.summary["ticks"] >= 0.95 * 50 * duration_s
    assert log.summary["overruns"] <= 0.02 * log.summary["ticks"]
    assert float(np.percentile(lateness_ms, 99)) < 15.0  # generous: the machine is shared


def test_a_port_that_cannot_be_bound_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "robotd.cli", "run", "--port", "/dev/null", "--log",
                                 str(tmp_path / "run.log"), "--foxglove", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and f"--foxglove 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Address already in use" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run.log").exists()  # nothing was started
