"""Phone IMU ingest: app formats, the UDP receiver and its clock-offset estimate.

Import cost matters (the daemon's hot path imports this): numpy, asyncio and imufusion only.
"""

from robotd.phone.formats import AutoDetect, MalformedPacket, Parser, SensorReading, make_parser

__all__ = ["AutoDetect", "MalformedPacket", "Parser", "SensorReading", "make_parser"]
