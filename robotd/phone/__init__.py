"""Phone IMU ingest: app formats, the UDP receiver, its clock-offset estimate, and the fusion
of each reading into the torso's orientation (:mod:`.fusion`, called by the receiver per packet).

Runs inside the daemon (on the robot, per packet), so it may import numpy, imufusion,
asyncio-dgram, ``calibration`` and ``sim``'s numpy-only helpers (``sim.rotations``), never
torch, MuJoCo, gymnasium or optuna, and nothing else of ``robotd``: the daemon, calibrate,
doctor and the re-run import it, not the other way round.

Importing the package loads only the (stdlib-only) formats; the receiver, which needs
asyncio-dgram, imufusion and numpy, is imported from ``robotd.phone.receiver``.
"""

from robotd.phone.formats import AutoDetect, MalformedPacket, Parser, SensorReading, make_parser

__all__ = ["AutoDetect", "MalformedPacket", "Parser", "SensorReading", "make_parser"]
