"""robotd: control daemon for a phone-IMU, MG996R-servo biped."""

__version__ = "0.1.0"
