"""``robotd replay LOG --rerun [--policy OTHER]``: feed a run's phone readings through again.

The latency log keeps every phone reading the daemon fused (``rx``, with its arrival time),
the safety mode of every tick and the action the policy produced. Re-running feeds those
readings through a fresh :class:`~robotd.phone.fusion.Fusion` and a policy, stepped by the control
loop's own :class:`~robotd.daemon.policy_tick.PolicyTick` (same order, same resets, the policy called
on the logged ``run`` ticks only), without hardware:

* with the logged policy, the torso orientation, every action and every joint target must
  come out bit for bit the same: the daemon's decisions are reproducible from its log;
* with another policy, the report shows where and by how much the servos would have been told
  something else (per joint, and as time spans). Targets (rad), not actions, are compared: an
  action means a target only through its policy's contract (stance, action scale, joints), so
  two policies whose contracts differ can send different poses with identical actions; the
  report names the contract fields that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from calibration import CalibrationError, load_calibration
from robotd.cli import existing_output
from robotd.commands.extras import require_extra
from robotd.phone.fusion import Fusion
from robotd.logs.latency_log import float32_values
from robotd.logs.logread import LogData, LogError, RawTick, read_log
from robotd.phone.formats import SensorReading
from robotd.daemon.policy_select import PolicyLoadError, load_policy
from robotd.daemon.policy_tick import PolicyTick

#: Actions (in [-1, 1] action units) or targets (rad) differing by more than this count as different.
DIFF_THRESHOLD = 1e-9


@dataclass
class DiffSpan:
    """A stretch of ticks where the re-run policy sent the servos other targets."""

    start_s: float
    end_s: float
    ticks: int
    max_abs_diff_rad: float


@dataclass
class RerunReport:
    log: str
    policy: str
    same_policy: bool
    ticks: int
    ticks_with_action: int
    identical_actions: int
    identical_orientation: int
    orientation_compared: int
    max_abs_action_diff: float
    mean_abs_action_diff: float
    per_joint_max_abs_diff: dict[str, float]  # actions, by controlled joint of the re-run policy
    ticks_with_targets: int = 0
    identical_targets: int = 0
    max_abs_target_diff_rad: float = 0.0
    mean_abs_target_diff_rad: float = 0.0
    per_joint_max_abs_target_diff_rad: dict[str, float] = field(default_factory=dict)  # all joints
    contract_differences: list[str] = field(default_factory=list)  # logged vs re-run contract
    spans: list[DiffSpan] = field(default_factory=list)  # where the targets differ
    policy_errors: int = 0

    @property
    def reproduced(self) -> bool:
        return (self.identical_actions == self.ticks_with_action
                and self.identical_targets == self.ticks_with_targets
                and self.identical_orientation == self.orientation_compared)

    def lines(self) -> list[str]:
        out = [
            f"re-ran {self.ticks} ticks of {self.log} with policy {self.policy}"
            + (" (the logged policy)" if self.same_policy else ""),
            f"orientation identical on {self.identical_orientation}/{self.orientation_compared} ticks",
            f"servo targets identical on {self.identical_targets}/{self.ticks_with_targets} ticks; "
            f"max |diff| {self.max_abs_target_diff_rad:.4g} rad, mean |diff| {self.mean_abs_target_diff_rad:.4g} rad",
        ]
        if self.contract_differences:
            out.append("the policies' contracts differ (" + ", ".join(self.contract_differences)
                       + "): the same action is another target, so only the targets are compared")
        else:
            out.append(f"actions identical on {self.identical_actions}/{self.ticks_with_action} ticks; "
                       f"max |diff| {self.max_abs_action_diff:.4g}, mean |diff| {self.mean_abs_action_diff:.4g}")
        if self.policy_errors:
            out.append(f"the policy raised on {self.policy_errors} ticks (their actions are NaN, not compared)")
        if self.same_policy:
            out.append("REPRODUCED exactly" if self.reproduced else "NOT reproduced: the run is not deterministic")
        if self.max_abs_target_diff_rad > DIFF_THRESHOLD:
            worst = sorted(self.per_joint_max_abs_target_diff_rad.items(), key=lambda kv: -kv[1])[:5]
            out.append("largest target differences by joint: " + ", ".join(f"{j} {d:.3f} rad" for j, d in worst))
            for span in self.spans[:10]:
                out.append(f"  {span.start_s:8.2f}-{span.end_s:8.2f} s  {span.ticks:5d} ticks  max |diff| "
                           f"{span.max_abs_diff_rad:.3f} rad")
            if len(self.spans) > 10:
                out.append(f"  ... {len(self.spans) - 10} more spans")
        return out


def _readings(rx: list[list]) -> list[tuple[float, SensorReading]]:
    out = []
    for arrival_t, phone_t, kind, values in rx:
        out.append((float(arrival_t), SensorReading(kind, tuple(float(v) for v in values),
                                                    None if phone_t is None else float(phone_t))))
    return out


def _logged_reset_action(tick: RawTick, n_actions: int) -> np.ndarray:
    """The history's start on a reset tick: the commanded pose the daemon logged (``reset_action``).

    The daemon computed it from the pose Safety had commanded, which the re-run has no way to
    recompute; a log from before it was kept had started from zeros.
    """
    if tick.reset_action is None:
        return np.zeros(n_actions)
    return np.array([np.nan if v is None else v for v in tick.reset_action], dtype=np.float64)


@dataclass(frozen=True)
class _Diff:
    """Logged vs re-run values of one kind (actions or targets), tick by tick."""

    compared: np.ndarray  # per tick: both sides have a value
    per_tick: np.ndarray  # per tick: the largest |diff| (0 where not compared)
    abs_diff: np.ndarray  # [ticks, columns]

    @classmethod
    def of(cls, logged: np.ndarray, rerun: np.ndarray) -> "_Diff":
        compared = ~np.isnan(logged).any(axis=1) & ~np.isnan(rerun).any(axis=1)
        abs_diff = np.abs(rerun - logged)
        per_tick = np.where(compared, np.nanmax(np.where(np.isnan(abs_diff), 0.0, abs_diff), axis=1), 0.0)
        return cls(compared, per_tick, abs_diff)

    @property
    def identical(self) -> int:
        return int((self.compared & (self.per_tick <= DIFF_THRESHOLD)).sum())

    @property
    def max_abs(self) -> float:
        return float(self.per_tick.max()) if len(self.per_tick) else 0.0

    @property
    def mean_abs(self) -> float:
        return float(self.abs_diff[self.compared].mean()) if self.compared.any() else 0.0

    def per_column_max(self, names: tuple[str, ...]) -> dict[str, float]:
        return {name: float(self.abs_diff[self.compared, k].max()) if self.compared.any() else 0.0
                for k, name in enumerate(names)}


def _values(row: list[float | None], n: int) -> np.ndarray:
    """A logged list (null: NaN) as n floats; all NaN when the tick logged none."""
    if len(row) != n:
        return np.full(n, np.nan)
    return np.array([np.nan if v is None else v for v in row], dtype=np.float64)


def rerun(log: LogData, policy_spec: str) -> tuple[RerunReport, np.ndarray, np.ndarray]:
    """Re-run fusion + policy over the log; returns the report and the (logged, re-run) joint
    targets in rad, [ticks, joints] in calibration order (NaN: none that tick)."""
    header = log.header
    cal_path = header.get("calibration", {}).get("path")
    try:
        cal = load_calibration(cal_path)
    except CalibrationError:
        warnings.warn(f"the run's calibration {cal_path!r} is not readable here: using the shipped one", stacklevel=2)
        cal = load_calibration()
    logged_spec = header.get("policy", {}).get("spec") or header.get("policy", {}).get("name")
    policy = load_policy(policy_spec, cal)
    spec = policy.spec
    fusion = Fusion(cal)
    policy_errors: list[Exception] = []  # a policy that raised in the run raises again here
    stepper = PolicyTick(policy, spec, on_error=policy_errors.append)
    n, n_joints = log.n_ticks, len(cal.joint_names)
    logged = np.full((n, spec.n_actions), np.nan)
    rerun_actions = np.full((n, spec.n_actions), np.nan)
    logged_targets = np.full((n, n_joints), np.nan)
    rerun_targets = np.full((n, n_joints), np.nan)
    following = log.mode_is("run")  # the mode Safety.decide settled before the policy ran
    quat = gyro = None
    same_quat = quat_compared = 0
    for i, tick in enumerate(log.raw_ticks()):
        for arrival_t, reading in _readings(tick.rx):
            out = fusion.update([reading], arrival_t)
            quat, gyro = out.quat_wxyz, out.gyro_torso_rad_s
        if quat is not None and not np.isnan(log.quat_wxyz[i, 0]):
            quat_compared += 1
            same_quat += bool(np.array_equal(float32_values(quat), log.quat_wxyz[i]))
        step = stepper.step(bool(following[i]), quat, gyro, partial(_logged_reset_action, tick, spec.n_actions))
        if step.action is not None:
            rerun_actions[i, : len(step.action)] = step.action
            rerun_targets[i] = spec.targets_rad(step.action, cal.nominal_rad)  # as the control loop does
        logged[i] = _values(tick.action, spec.n_actions)
        logged_targets[i] = _values(tick.targets_rad, n_joints)

    actions, targets = _Diff.of(logged, rerun_actions), _Diff.of(logged_targets, rerun_targets)
    logged_contract = header.get("observation")
    report = RerunReport(
        log=str(log.path),
        policy=policy.identity,
        same_policy=policy_spec == logged_spec,
        ticks=n,
        ticks_with_action=int(actions.compared.sum()),
        identical_actions=actions.identical,
        identical_orientation=same_quat,
        orientation_compared=quat_compared,
        max_abs_action_diff=actions.max_abs,
        mean_abs_action_diff=actions.mean_abs,
        per_joint_max_abs_diff=actions.per_column_max(spec.controlled_joints),
        ticks_with_targets=int(targets.compared.sum()),
        identical_targets=targets.identical,
        max_abs_target_diff_rad=targets.max_abs,
        mean_abs_target_diff_rad=targets.mean_abs,
        per_joint_max_abs_target_diff_rad=targets.per_column_max(tuple(cal.joint_names)),
        contract_differences=[key for key, _, _ in spec.differences(logged_contract)] if logged_contract else [],
        spans=_spans(log.t_s - log.t_s[0] if n else log.t_s, targets.per_tick),
        policy_errors=len(policy_errors),
    )
    return report, logged_targets, rerun_targets


def _spans(t_s: np.ndarray, per_tick: np.ndarray) -> list[DiffSpan]:
    spans: list[DiffSpan] = []
    start = None
    for i, d in enumerate(np.append(per_tick, 0.0)):
        if d > DIFF_THRESHOLD and start is None:
            start = i
        elif d <= DIFF_THRESHOLD and start is not None:
            spans.append(DiffSpan(float(t_s[start]), float(t_s[i - 1]), i - start, float(per_tick[start:i].max())))
            start = None
    return spans


def _plot(path: Path, t_s: np.ndarray, logged: np.ndarray, rerun_targets: np.ndarray, joints: dict[str, int],
          title: str) -> None:
    """Logged vs re-run target (rad) of each joint in ``joints`` (name -> its column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(joints), 1, figsize=(10, 1.2 * len(joints) + 1), sharex=True)
    for ax, (name, k) in zip(np.atleast_1d(axes), joints.items()):
        ax.plot(t_s, logged[:, k], lw=1, label="logged")
        ax.plot(t_s, rerun_targets[:, k], lw=1, ls="--", label="re-run")
        ax.set_ylabel(f"{name}\n(rad)", rotation=0, ha="right", fontsize=8)
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="robotd replay LOG --rerun", description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--policy", default=None, help="policy to re-run (default: the logged one)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of logged vs re-run joint targets (rad)")
    parser.add_argument("--force", action="store_true", help="replace an existing --plot file")
    args = parser.parse_args(argv)
    refused = existing_output(args.plot, "--plot", args.force)
    if refused:
        print(f"robotd replay: {refused}", file=sys.stderr)
        return 2
    if args.plot is not None:
        require_extra("plot")  # before the re-run and its report, not after
    try:
        log = read_log(args.log)
    except LogError as exc:
        print(f"robotd replay: {exc}", file=sys.stderr)
        return 2
    policy_spec = args.policy or log.header.get("policy", {}).get("spec")
    if not policy_spec:
        print(f"robotd replay: {args.log}: the header names no policy; give --policy", file=sys.stderr)
        return 2
    try:
        report, logged, rerun_targets = rerun(log, policy_spec)
    except PolicyLoadError as exc:
        print(f"robotd replay: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**asdict(report), "reproduced": report.reproduced}))
    else:
        print("\n".join(report.lines()))
    if args.plot is not None:
        t = log.t_s - log.t_s[0] if log.n_ticks else log.t_s
        # The joints whose targets differ, or (none differ) the re-run policy's own
        names = list(report.per_joint_max_abs_target_diff_rad)
        shown = [j for j in names if report.per_joint_max_abs_target_diff_rad[j] > DIFF_THRESHOLD]
        joints = {j: names.index(j) for j in shown or report.per_joint_max_abs_diff}
        _plot(args.plot, t, logged, rerun_targets, joints, f"{args.log.name}: logged vs {report.policy}")
    return 0 if (report.reproduced or not report.same_policy) else 1
