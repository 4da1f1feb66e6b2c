"""The latency log: the loop's hand-off queue, the writer thread, the files (plain or zstd,
rotated), the log's path, the reader, and the two Foxglove views of it (live and MCAP).

Everything here works on log records, not on the robot: the daemon writes through
:mod:`.record_queue` and :mod:`.latency_log` and names its file with :mod:`.log_path`;
``robotd replay``, the re-run, the benchmarks and the tests read through :mod:`.logread`.
The Foxglove modules (:mod:`.foxglove_channels`, :mod:`.foxglove_live`, :mod:`.mcap_export`)
need the ``[foxglove]`` extra and are imported only when asked for.

May import: numpy, zstandard, the foxglove SDK (the Foxglove modules only) and ``sim``'s
numpy-only helpers (``sim.observation``, ``sim.sensor_values``); never torch, MuJoCo,
gymnasium or optuna, and nothing else of ``robotd``: the daemon and the commands import the
log, the log imports neither.
"""
