"""How a phone's sensor values are written: at float32 precision.

Android's ``SensorEvent.values`` is a ``float[]``, and the apps serialise each value as
float32's shortest decimal (``Float.toString``): 7-9 significant digits. The simulated phone
writes its values this way (:mod:`sim.phone_stream`), and the daemon's latency log keeps the
orientation and gyro it computes from such readings at the same precision
(:mod:`robotd.logs.latency_log`). Imports numpy only: the daemon's log writer uses it.
"""

from __future__ import annotations

import numpy as np


def float32_text(value: float) -> float:
    """``value`` rounded to float32, as the float whose shortest repr is float32's shortest decimal."""
    return float(str(np.float32(value)))
