"""Latency probe: command small joint steps, watch the phone's gyro, measure dead and response time.

What is timed, per step:

* ``t_cmd`` — when the serial write of the step returned (``CommandResult.tx_done_s``,
  local monotonic clock).
* the gyro samples' own times: the phone's timestamps mapped onto the local clock with the
  receiver's offset estimate (the minimum of ``arrival - phone_time`` over the packets
  around the step, see ``robotd/phone/clock.py``). Arrival times are not used for timing:
  they carry each packet's network latency (10-60 ms uniform in the simulator, Wi-Fi jitter
  on the robot), the phone's timestamps do not. The minimum assumes the fastest packet had
  no delay, so the result would be too large by the phone's *minimum* sensor-to-arrival
  latency; ``--phone-min-latency-ms`` subtracts a known one (under ``--port sim`` the
  simulated transport's lower bound, 10 ms; on the robot 0 unless measured, e.g. half the
  phone's ping round trip). Untimed formats (Sensors2OSC) fall back to arrival times and then
  include the whole packet latency (the report says so).

Detection (:func:`analyse_step`): the gyro's mean over the ``baseline_s`` before the step is
subtracted; motion is the first two consecutive samples whose deviation exceeds
``max(k_sigma * baseline noise per axis, floor)``; the deviation is then projected onto the
direction of that first excursion. The onset is the tangent method from process control: a
line through the rising edge (20-80 % of the first peak) extrapolated back to zero rate,
clipped between the command and the detection.

* **dead time** = onset - ``t_cmd``: command-to-motion. On the robot that is USB + board
  processing + the servo's next PWM frame + its deadband and electronics + gear backlash,
  until the torso turns measurably.
* **response time** = from the onset until the torso has turned through 90 % of the
  step's first rotation peak (the gyro deviation integrated along that axis). It includes
  the servo's slew and how the body follows; it is a small-step figure, not the datasheet's
  60-degree time.

Each value saved is the median over the steps; the spread is reported.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StepResult:
    t_cmd_s: float
    direction: int  # +1 step out, -1 step back
    detected: bool
    dead_ms: float = math.nan
    response_ms: float = math.nan
    peak_rad_s: float = math.nan
    threshold_rad_s: float = math.nan
    reason: str = ""


@dataclass
class ProbeResult:
    steps: list[StepResult]
    timing: str  # "phone clock" or "arrival (packet latency included)"
    offset_spread_ms: float = math.nan
    detected: list[StepResult] = field(init=False)

    def __post_init__(self) -> None:
        self.detected = [s for s in self.steps if s.detected]

    @property
    def dead_ms(self) -> float:
        return statistics.median(s.dead_ms for s in self.detected)

    @property
    def response_ms(self) -> float:
        return statistics.median(s.response_ms for s in self.detected)

    def spread(self, attr: str) -> tuple[float, float, float, float]:
        """(min, p25, p75, max) of one per-step value."""
        v = np.array([getattr(s, attr) for s in self.detected])
        return float(v.min()), float(np.percentile(v, 25)), float(np.percentile(v, 75)), float(v.max())

    def lines(self) -> list[str]:
        out = []
        for i, s in enumerate(self.steps):
            if s.detected:
                out.append(f"step {i + 1:2d} ({'+' if s.direction > 0 else '-'}): dead {s.dead_ms:6.1f} ms, "
                           f"response {s.response_ms:6.1f} ms, peak {s.peak_rad_s:5.2f} rad/s "
                           f"(threshold {s.threshold_rad_s:.3f})")
            else:
                out.append(f"step {i + 1:2d}: no response ({s.reason})")
        if self.detected:
            lo, q1, q3, hi = self.spread("dead_ms")
            rlo, rq1, rq3, rhi = self.spread("response_ms")
            out.append(f"dead time     median {self.dead_ms:6.1f} ms  (IQR {q1:.1f}..{q3:.1f}, "
                       f"range {lo:.1f}..{hi:.1f}, {len(self.detected)}/{len(self.steps)} steps)")
            out.append(f"response time median {self.response_ms:6.1f} ms  (IQR {rq1:.1f}..{rq3:.1f}, "
                       f"range {rlo:.1f}..{rhi:.1f})")
        out.append(f"timing: {self.timing}" + (f", clock offset spread {self.offset_spread_ms:.1f} ms"
                                                 if math.isfinite(self.offset_spread_ms) else ""))
        return out


def analyse_step(t_cmd: float, times: np.ndarray, gyro: np.ndarray, *, direction: int = 1,
                 baseline_s: float = 0.3, window_s: float = 0.6, k_sigma: float = 5.0,
                 floor_rad_s: float = 0.05) -> StepResult:
    """Dead and response time of one step from gyro samples (local times ``times``, (N,3) rad/s)."""
    times = np.asarray(times, dtype=np.float64)
    gyro = np.asarray(gyro, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(times, kind="stable")
    times, gyro = times[order], gyro[order]
    base = (times >= t_cmd - baseline_s) & (times < t_cmd)
    win = (times >= t_cmd) & (times < t_cmd + window_s)
    if base.sum() < 5 or win.sum() < 5:
        return StepResult(t_cmd, direction, False, reason=f"{base.sum()} baseline / {win.sum()} window samples")
    bias = gyro[base].mean(axis=0)
    dev = gyro[win] - bias
    t = times[win]
    mags = np.linalg.norm(dev, axis=1)
    noise = math.sqrt(float(np.mean(np.sum((gyro[base] - bias) ** 2, axis=1))) / 3.0)  # per axis
    threshold = max(k_sigma * noise, floor_rad_s)
    above = mags > threshold
    hits = np.flatnonzero(above[:-1] & above[1:])
    if len(hits) == 0:
        return StepResult(t_cmd, direction, False, threshold_rad_s=threshold,
                          reason=f"gyro never beyond {threshold:.3f} rad/s")
    k = int(hits[0])
    # The response's axis is where the first excursion points (not the largest one: a rebound
    # may be larger than the first swing).
    first = dev[k:k + 3].sum(axis=0)
    s = dev @ (first / max(float(np.linalg.norm(first)), 1e-12))
    # First peak: the maximum of the lobe that starts at the detection.
    end = k
    while end + 1 < len(s) and s[end + 1] > 0:
        end += 1
    kpeak = k + int(np.argmax(s[k:end + 1]))
    peak = float(s[kpeak])
    # Tangent method on the rising edge.
    lo_i = k
    while lo_i > 0 and s[lo_i - 1] > 0.2 * peak:
        lo_i -= 1
    edge = [i for i in range(max(lo_i - 1, 0), kpeak + 1) if 0.2 * peak <= s[i] <= 0.8 * peak]
    if len(edge) >= 2:
        slope, intercept = np.polyfit(t[edge], s[edge], 1)
        onset = -intercept / slope if slope > 0 else float(t[k])
    else:
        onset = float(t[k - 1] + t[k]) / 2 if k > 0 else float(t[k])
    onset = min(max(onset, t_cmd), float(t[k]))
    # Response: integrated rotation along the axis, from the onset to the lobe's end.
    seg = slice(k, end + 1)
    ts = np.concatenate([[onset], t[seg]])
    ss = np.concatenate([[0.0], s[seg]])
    theta = np.concatenate([[0.0], np.cumsum(0.5 * (ss[1:] + ss[:-1]) * np.diff(ts))])
    reach = np.flatnonzero(theta >= 0.9 * theta[-1])
    t90 = float(ts[reach[0]])
    if reach[0] > 0:  # interpolate within the sample interval
        i = reach[0]
        frac = (0.9 * theta[-1] - theta[i - 1]) / max(theta[i] - theta[i - 1], 1e-12)
        t90 = float(ts[i - 1] + frac * (ts[i] - ts[i - 1]))
    return StepResult(t_cmd, direction, True, dead_ms=(onset - t_cmd) * 1e3, response_ms=(t90 - onset) * 1e3,
                      peak_rad_s=peak, threshold_rad_s=threshold)


def local_sample_times(arrival_s: np.ndarray, phone_t_s: np.ndarray, around_s: np.ndarray,
                       window_s: float = 5.0, min_latency_s: float = 0.0) -> tuple[np.ndarray, str, float]:
    """Local times of samples taken at ``phone_t_s``, per step; (times, timing label, offset spread ms).

    Offset = minimum of ``arrival - phone_t`` over the samples within ``window_s`` of each step
    time in ``around_s`` (as ``ClockOffset`` does, centred on the step so drift does not matter),
    less the transport's known minimum latency ``min_latency_s`` (the fastest packet's delay,
    which the minimum cannot see). Returns a 2-D array: one row of sample times per step.
    """
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    phone_t_s = np.asarray(phone_t_s, dtype=np.float64)
    if len(phone_t_s) == 0 or np.isnan(phone_t_s).any():
        label = "arrival times (untimed format: packet latency included)"
        return np.tile(arrival_s, (len(around_s), 1)), label, math.nan
    diff = arrival_s - phone_t_s
    offsets = []
    for t in around_s:
        near = np.abs(arrival_s - t) <= window_s
        offsets.append(float(diff[near].min()) if near.any() else float(diff.min()))
    offsets = np.array(offsets) - min_latency_s
    spread = float((offsets.max() - offsets.min()) * 1e3) if len(offsets) else math.nan
    label = f"phone clock (offset = fastest packet - {min_latency_s * 1e3:g} ms minimum latency)"
    return phone_t_s[None, :] + offsets[:, None], label, spread


def analyse_probe(commands: list[tuple[float, int]], arrival_s: np.ndarray, phone_t_s: np.ndarray,
                  gyro: np.ndarray, *, min_latency_s: float = 0.0, **kwargs) -> ProbeResult:
    """All steps: ``commands`` = [(t_cmd, direction)], gyro samples with arrival and phone times."""
    t_cmds = np.array([c[0] for c in commands])
    times, label, spread = local_sample_times(arrival_s, phone_t_s, t_cmds, min_latency_s=min_latency_s)
    steps = [analyse_step(t, times[i], gyro, direction=d, **kwargs) for i, (t, d) in enumerate(commands)]
    return ProbeResult(steps, label, spread)
