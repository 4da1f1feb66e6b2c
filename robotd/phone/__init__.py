"""Phone IMU ingest: app formats, the UDP receiver and its clock-offset estimate.

Importing the package loads only the (stdlib-only) formats; the receiver, which needs
asyncio-dgram, imufusion and numpy, is imported from ``robotd.phone.receiver``.
"""

from robotd.phone.formats import AutoDetect, MalformedPacket, Parser, SensorReading, make_parser

__all__ = ["AutoDetect", "MalformedPacket", "Parser", "SensorReading", "make_parser"]
