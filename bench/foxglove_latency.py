"""Does a Foxglove viewer cost the control loop anything? Policy-to-write latency with and without one.

Runs ``robotd run`` (PD policy, 50 Hz) as its own process against the board emulator with a
100 Hz SensaGram phone, once per case, each in a fresh process:

* ``off``: no ``--foxglove``;
* ``on, no client``: ``--foxglove``, nobody connected;
* ``on, client``: a client subscribed to every channel, reading everything;
* ``on, stalled client``: a client subscribed to everything that stops reading (4 kB receive buffer).

From each run's latency log it prints p50 / p99 / max of policy-to-write (the ``policy``,
``safety``, ``encode`` and ``write`` stages: from the policy's start to the serial write
returning), of ``tick_us`` and of tick lateness (tick start - deadline), plus overruns and
the messages the client received. Usage::

    python bench/foxglove_latency.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from daemon_harness import daemon_process  # noqa: E402
from foxglove_client import connect, receive, subscribe_all  # noqa: E402

from robotd.logs.logread import read_log  # noqa: E402


async def _client(url: str, seconds: float, stalled: bool) -> int:
    ws = await connect(url, rcvbuf=4096 if stalled else None)
    subs = await subscribe_all(ws)
    if stalled:
        await asyncio.sleep(seconds)
        ws.transport.abort()
        return 0
    got = await receive(ws, subs, seconds)
    await ws.close()
    return sum(len(v) for v in got.values())


def run_case(seconds: float, foxglove: bool, client: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        with daemon_process(Path(tmp), seconds, foxglove=foxglove) as (_, url, log_path):
            received = asyncio.run(_client(url, seconds + 5, client == "stalled")) if client else None
        log = read_log(log_path)
    run = log.mode_is("run")  # following the policy: after the start-up move
    policy_to_write = sum(log.stages_us[s] for s in ("policy", "safety", "encode", "write"))[run]
    lateness_us = ((log.t_s - log.deadline_s) * 1e6)[run]
    stats = {name: np.percentile(v[np.isfinite(v)], [50, 99]).tolist() + [float(np.nanmax(v))]
             for name, v in (("policy_to_write_us", policy_to_write), ("tick_us", log.tick_us[run]),
                             ("lateness_us", lateness_us))}
    return {**stats, "ticks": int(run.sum()), "overruns": (log.summary or {}).get("overruns"), "received": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    cases = [("off", False, None), ("on, no client", True, None), ("on, client", True, "reading"),
             ("on, stalled client", True, "stalled")]
    print(f"{args.seconds:g} s per case, 50 Hz, PD; p50 / p99 / max in µs over the ticks following the policy")
    for name, foxglove, client in cases:
        r = run_case(args.seconds, foxglove, client)
        fmt = lambda v: " / ".join(f"{x:7.0f}" for x in v)  # noqa: E731
        print(f"  {name:20s} policy->write {fmt(r['policy_to_write_us'])}   tick {fmt(r['tick_us'])}   "
              f"lateness {fmt(r['lateness_us'])}   ticks {r['ticks']}, overruns {r['overruns']}, "
              f"messages received {r['received']}")


if __name__ == "__main__":
    main()
