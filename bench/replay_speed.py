"""How long ``robotd replay`` takes on an hour's log, against a naive reader.

Writes a synthetic log per ``docs/latency-log.md`` (default: one hour at 50 Hz, 180 000
loop lines of about 1.6 kB with phone readings) into a temporary directory, then times,
each run in a fresh process so runs do not share memory or garbage-collector state:

* ``read_log`` (the columnar reader) and ``build_report`` on its result;
* the same on the log compressed as ``robotd run --log X.log.zst`` writes it (a zstd block
  per 100 ms flush of 5 ticks at 50 Hz, a frame per second), with both files' sizes per hour;
* a naive baseline: ``json.loads`` on every line, keeping the dicts (what a first reader
  of a JSON Lines file does, and what the columnar reader exists to avoid).

Prints the median of ``--runs`` runs (wall and CPU seconds), lines per second, peak
resident memory and the ratio of the two. Usage::

    python bench/replay_speed.py [--ticks 180000] [--runs 3] [--log existing.log] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from robotd.logs.log_files import LogFileWriter  # noqa: E402
from robotd.logs.logread import read_log  # noqa: E402
from robotd.commands.replay import build_report  # noqa: E402


def columnar(path: Path) -> dict[str, float]:
    start = time.perf_counter()
    log = read_log(path)
    read_s = time.perf_counter() - start
    build_report(log)
    return {"read_s": read_s, "report_s": time.perf_counter() - start - read_s}


def naive(path: Path) -> dict[str, float]:
    start = time.perf_counter()
    with open(path, "rb") as f:
        records = [json.loads(line) for line in f]
    assert records
    return {"read_s": time.perf_counter() - start}


def compress_like_the_daemon(src: Path, dst: Path, lines_per_flush: int) -> Path:
    """``src`` re-written as the daemon writes a ``.zst`` log (the daemon's file writer, flushed
    as often). ``src`` keeps its precision: a real run's log is at the daemon's already."""
    with open(src, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        writer = LogFileWriter(dst, lambda _k: header)
        for i, line in enumerate(f):
            writer.write(line.rstrip("\n"))
            if i % lines_per_flush == lines_per_flush - 1:
                writer.flush()
        writer.close()
    return dst


def _child(fn: Callable[[Path], dict[str, float]], path: Path) -> dict[str, float]:
    cpu_start_s = time.process_time()
    result = fn(path)
    result["cpu_s"] = time.process_time() - cpu_start_s  # less disturbed than wall time on a busy machine
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def runs(fn: Callable[[Path], dict[str, float]], path: Path, n: int) -> dict[str, float]:
    """Medians over ``n`` runs, each in a freshly spawned interpreter."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        results = [pool.apply(_child, (fn, path)) for _ in range(n)]
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=180_000, help="loop lines to generate (default: 1 h at 50 Hz)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--log", type=Path, help="time this (plain) log instead of generating one")
    parser.add_argument("--rate", type=float, default=50.0, help="the log's tick rate, for sizes per hour")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.log
        if path is None:
            from test_logread import synthetic_run, write_log

            start = time.perf_counter()
            path = write_log(Path(tmp) / "bench.log", synthetic_run(args.ticks, overrun_every=997, fall=(1000, 1200),
                                                                    stale=(5000, 5010)), summary={"ticks": args.ticks})
            print(f"generated in {time.perf_counter() - start:.1f} s")
        with open(path, "rb") as f:
            n_lines = sum(1 for _ in f)
        packed = compress_like_the_daemon(path, Path(tmp) / "bench.log.zst", round(args.rate * 0.1))
        hours = read_log(packed).n_ticks / args.rate / 3600
        size_mb, packed_mb = path.stat().st_size / 1e6, packed.stat().st_size / 1e6
        print(f"log: {path.name}, {n_lines} lines, {size_mb:.1f} MB, {1e6 * size_mb / n_lines:.0f} B/line; "
              f"median of {args.runs} runs, each in a fresh process")
        print(f"  size per hour at {args.rate:g} Hz: plain {size_mb / hours:.1f} MB, zstd {packed_mb / hours:.1f} MB "
              f"({size_mb / packed_mb:.2f}x smaller)")

        ours = runs(columnar, path, args.runs)
        zstd = runs(columnar, packed, args.runs)
        base = runs(naive, path, args.runs)

    total_s = ours["read_s"] + ours["report_s"]
    print(f"  read_log              {ours['read_s']:6.2f} s  {n_lines / ours['read_s']:9.0f} lines/s  "
          f"peak RSS {ours['peak_rss_mb']:6.0f} MB")
    print(f"  build_report          {ours['report_s']:6.2f} s")
    print(f"  read_log, zstd        {zstd['read_s']:6.2f} s  {n_lines / zstd['read_s']:9.0f} lines/s  "
          f"peak RSS {zstd['peak_rss_mb']:6.0f} MB  CPU {zstd['cpu_s']:6.2f} s (read + report)")
    print(f"  read + report         {total_s:6.2f} s  {n_lines / total_s:9.0f} lines/s  "
          f"CPU {ours['cpu_s']:6.2f} s")
    print(f"  naive json.loads/line {base['read_s']:6.2f} s  {n_lines / base['read_s']:9.0f} lines/s  "
          f"CPU {base['cpu_s']:6.2f} s  peak RSS {base['peak_rss_mb']:6.0f} MB  (dicts only, no report)")
    print(f"  ratio naive / (read + report): {base['read_s'] / total_s:.2f}x time, "
          f"{base['cpu_s'] / ours['cpu_s']:.2f}x CPU, "
          f"{base['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x memory")


if __name__ == "__main__":
    main()
