"""Parser fuzzing through the real socket: malformed datagrams in every supported format,
interleaved with a valid 100 Hz stream, sent to the running daemon.

Pass: the daemon survives (still running, clean exit 0 with a summary line, no traceback),
every datagram is accounted for exactly (accepted + malformed + foreign + stale + ignored
from the daemon's summary, plus what the kernel dropped from the socket's queue, equals what
was sent), no packet reached the parsers' catch-all ("parser error ..." reasons would be
parser bugs), and the loop kept its rate while it happened.

CI sends 2 000 per format; the slow version 100 000 per format.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import RATE_HZ, Rig, figure, lateness_ms, pct, streamer, udp_socket_drops
from fuzzgen import FORMATS, corpus_seed, malformed
from sim.phone_stream import swaying_torso


def _fuzz_case(rig: Rig, emulator, fmt: str, count: int, rate: float, case: str) -> None:
    d = rig.start(emulator.path, phone_format=fmt)
    d.wait_listening()
    sock_sent = 0
    with streamer(d.udp_port, fmt) as phone:
        phone.start(swaying_torso(rig.cal.phone_to_torso))
        time.sleep(0.6)  # start-up move done, following the policy
        t0 = time.monotonic()
        batch = 50
        for i, datagram in enumerate(malformed(fmt, seed=corpus_seed(fmt), count=count)):
            phone.send_raw(datagram)
            sock_sent += 1
            if i % batch == batch - 1:
                ahead = t0 + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        t1 = time.monotonic()
        time.sleep(0.3)
        phone.stop()
        valid_sent = phone.sent_datagrams - sock_sent
    time.sleep(0.2)
    drops = udp_socket_drops(d.udp_port)
    assert d.alive(), d.stderr()
    assert d.stop(signal.SIGTERM) == 0, d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()
    log = d.log()
    s = log.summary
    assert s is not None, log.warnings
    malformed_total = sum(s["packets_malformed"].values())
    accounted = s["packets_accepted"] + malformed_total + s["packets_foreign"] + s["packets_stale"] + \
        s["packets_ignored"] + drops
    during = (log.t_s > t0) & (log.t_s < t1)
    ticks = log.t_s[during]
    tick_rate = (len(ticks) - 1) / (ticks[-1] - ticks[0])
    late = lateness_ms(log, during)
    overruns = int(log.has_flag("overrun")[during].sum())
    bugs = {k: v for k, v in s["packets_malformed"].items() if k.startswith("parser error")}

    figure(case, "fuzzed_sent", sock_sent)
    figure(case, "valid_sent", valid_sent)
    figure(case, "fuzz_rate_per_s", round(sock_sent / (t1 - t0)))
    figure(case, "accepted_malformed_stale_ignored_drops",
           (s["packets_accepted"], malformed_total, s["packets_stale"], s["packets_ignored"], drops))
    figure(case, "malformed_reasons", len(s["packets_malformed"]))
    figure(case, "tick_rate_hz_during", round(tick_rate, 2))
    figure(case, "lateness_ms_p99_during", round(pct(late, 99), 2))
    figure(case, "overruns_during", overruns)
    figure(case, "run_fraction_during", round(float(log.mode_is("run")[during].mean()), 3))

    assert accounted == sock_sent + valid_sent, (accounted, sock_sent, valid_sent, s)
    assert not bugs, bugs
    assert malformed_total > 0.5 * sock_sent
    assert tick_rate == pytest.approx(RATE_HZ, rel=0.03)
    assert pct(late, 99) < 10.0 and overruns <= max(2, len(ticks) // 100)
    assert emulator.framing_errors == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_each_format(rig: Rig, emulator, fmt: str) -> None:
    _fuzz_case(rig, emulator, fmt, count=2_000, rate=4_000, case=f"fuzz_ci[{fmt}]")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_100k_each_format(rig: Rig, emulator, fmt: str) -> None:
    _fuzz_case(rig, emulator, fmt, count=100_000, rate=8_000, case=f"fuzz_100k[{fmt}]")


def test_the_corpus_is_the_same_in_every_process() -> None:
    """Two processes with different hash randomisation build byte-identical corpora."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = ("import hashlib, fuzzgen\n"
              "print({f: hashlib.sha256(b''.join(fuzzgen.malformed(f, fuzzgen.corpus_seed(f), 200))).hexdigest()"
              " for f in fuzzgen.FORMATS})")
    here = Path(__file__).parent
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed,
               "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
        digests.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True, timeout=60).stdout)
    assert digests[0] == digests[1] and len(digests[0]) > 64  # sha256 of each format's first 200 datagrams
