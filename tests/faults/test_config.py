"""Bad configuration through the CLI process: every broken calibration field or flag exits
non-zero with one line naming the file (for the calibration), the key and the reason, before
anything is opened or moved. All cases run as concurrent processes to keep CI short.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, figure, write_calibration

# (case id, replacement in the shipped calibration text, expected key, expected reason fragment)
CALIBRATION_CASES = [
    ("toml_syntax", ("[robot]", "[robot"), "<toml>", "not valid TOML"),
    ("unknown_section", ("[robot]", "[robots]\nx = 1\n[robot]"), "robots", "unknown section"),
    ("mass_string", ("mass_kg = 1.9", 'mass_kg = "heavy"'), "robot.mass_kg", "expected a number"),
    ("mass_negative", ("mass_kg = 1.9", "mass_kg = -1.9"), "robot.mass_kg", "must be > 0"),
    ("mass_nan", ("mass_kg = 1.9", "mass_kg = nan"), "robot.mass_kg", "must be finite"),
    ("channels_zero", ("channels = 32", "channels = 0"), "board.channels", "must be in 1..64"),
    ("startup_move_negative", ("startup_move_ms = 300", "startup_move_ms = -5"), "board.startup_move_ms",
     "must be in 0..9999"),
    ("startup_move_huge", ("startup_move_ms = 300", "startup_move_ms = 100000"), "board.startup_move_ms",
     "must be in 0..9999"),
    ("startup_move_float", ("startup_move_ms = 300", "startup_move_ms = 0.5"), "board.startup_move_ms",
     "expected an integer"),
    ("mount_not_rotation", ("phone_to_torso = [[0.0, 0.0, -1.0]", "phone_to_torso = [[0.0, 0.0, -2.0]"),
     "imu.phone_to_torso", "not a rotation matrix"),
    ("mount_short", ("phone_to_torso = [[0.0, 0.0, -1.0], ", "phone_to_torso = ["), "imu.phone_to_torso",
     "expected a 3x3 rotation matrix"),
    ("gyro_bias_len", ("gyro_bias_rad_s = [0.0, 0.0, 0.0]", "gyro_bias_rad_s = [0.0, 0.0]"), "imu.gyro_bias_rad_s",
     "expected a list of 3 numbers"),
    ("slew_zero", ("max_slew_rad_s = 4.0", "max_slew_rad_s = 0.0"), "safety.max_slew_rad_s", "must be > 0"),
    ("stale_negative", ("stale_timeout_ms = 150.0", "stale_timeout_ms = -1.0"), "safety.stale_timeout_ms",
     "must be > 0"),
    ("fall_tilt_huge", ("fall_tilt_deg = 45.0", "fall_tilt_deg = 200.0"), "safety.fall_tilt_deg", "must be < 180"),
    ("fall_ticks_zero", ("fall_ticks = 3", "fall_ticks = 0"), "safety.fall_ticks", "must be >= 1"),
    ("deadband_negative", ("deadband_us = 5", "deadband_us = -5"), "safety.deadband_us", "must be >= 0"),
    ("pose_unknown_joint", ("l_knee = 0.5\n", "l_kneee = 0.5\n"), "poses.nominal.l_kneee", "unknown joint"),
    ("pose_out_of_range", ("l_knee = 1.0\n", "l_knee = 3.0\n"), "poses.safe.l_knee", "outside the joint's calibrated"),
    ("joint_channel_dup", ("channel = 2\n", "channel = 1\n"), "joints[1].channel", "duplicate channel 1"),
    ("joint_channel_range", ("channel = 17\n", "channel = 40\n"), "joints[16].channel", "must be in 1..32"),
    ("joint_pulse_range", ("max_us = 2450", "max_us = 2600"), "joints[9].max_us", "outside 500..2500"),
    ("joint_min_gt_max", ("min_us = 1400\n", "min_us = 2460\n"), "joints[9].min_us", "> max_us"),
    ("joint_neutral_outside", ("min_us = 1200\nmax_us = 1800", "min_us = 1600\nmax_us = 1800"),
     "joints[7].neutral_us", "within min_us..max_us"),
    ("joint_direction", ("direction = 1\n", "direction = 2\n"), "joints[0].direction", "must be 1 or -1"),
    ("joint_axis", ("axis = [0.0, 0.0, 1.0]", "axis = [0.0, 0.0, 2.0]"), "joints[0].axis", "unit vector"),
    ("joint_us_per_rad", ("us_per_rad = 637.0", "us_per_rad = 0"), "joints[0].us_per_rad", "must be > 0"),
    ("joint_name_unknown", ('name = "neck_yaw"', 'name = "neck"'), "joints[0].name", "unknown joint"),
]

# (case id, extra CLI arguments, fragment the error must contain)
FLAG_CASES = [
    ("rate_zero", ["--rate", "0"], "--rate: must be > 0"),
    ("rate_text", ["--rate", "fast"], "--rate"),
    ("udp_no_port", ["--udp", "127.0.0.1"], "--udp: expected HOST:PORT"),
    ("udp_port_range", ["--udp", "127.0.0.1:70000"], "--udp: expected HOST:PORT"),
    ("stale_timeout_negative", ["--stale-timeout-ms", "-3"], "--stale-timeout-ms: must be > 0"),
    ("phone_format_unknown", ["--phone-format", "bogus"], "bogus"),
    ("hyperimu_no_order", ["--phone-format", "hyperimu"], "hyperimu"),
    ("policy_missing", ["--policy", "/nonexistent/policy.safetensors"], "/nonexistent/policy.safetensors"),
    ("calibration_missing", ["--calibration", "/nonexistent/robot.toml"], "/nonexistent/robot.toml: <file>: no such file"),
    ("port_missing", ["--port", "/nonexistent/ttyACM9"], "/nonexistent/ttyACM9"),
]


def _run_all(jobs: dict[str, list[str]], cwd: Path) -> dict[str, tuple[int, str, float]]:
    started = {}
    for name, argv in jobs.items():
        started[name] = (subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                         time.monotonic())
        while sum(p.poll() is None for p, _ in started.values()) >= 4:  # 2 cores: a few at a time
            time.sleep(0.01)
    out = {}
    for name, (proc, t0) in started.items():
        stdout, stderr = proc.communicate(timeout=60)
        out[name] = (proc.returncode, stderr + stdout, time.monotonic() - t0)
    return out


def _base(port: str, udp: str = "127.0.0.1:0") -> list[str]:
    return [sys.executable, "-m", "robotd.cli", "run", "--port", port, "--udp", udp, "--log", "", "--duration", "1"]


def test_bad_calibration_and_flags_name_file_key_reason(tmp_path: Path, emulator) -> None:
    jobs: dict[str, list[str]] = {}
    paths = {}
    for name, (old, new), _, _ in CALIBRATION_CASES:
        paths[name] = write_calibration(tmp_path, f"{name}.toml", **{old: new})
        jobs[f"cal:{name}"] = _base(emulator.path) + ["--calibration", str(paths[name])]
    for name, extra, _ in FLAG_CASES:
        argv = _base(emulator.path)
        # a later flag wins in argparse: append the broken one
        jobs[f"flag:{name}"] = argv + extra
    results = _run_all(jobs, REPO)

    failures = []
    for name, _, key, reason in CALIBRATION_CASES:
        rc, text, secs = results[f"cal:{name}"]
        expected = f"{paths[name]}: {key}: "
        figure("config", f"cal:{name}", f"rc={rc} {text.strip().splitlines()[-1] if text.strip() else ''!r}")
        if rc == 0 or expected not in text or reason not in text or "Traceback" in text:
            failures.append((name, rc, expected, text[-600:]))
    for name, _, fragment in FLAG_CASES:
        rc, text, secs = results[f"flag:{name}"]
        figure("config", f"flag:{name}", f"rc={rc} {text.strip().splitlines()[-1] if text.strip() else ''!r}")
        if rc == 0 or fragment not in text or "Traceback" in text:
            failures.append((name, rc, fragment, text[-600:]))
    assert not failures, "\n\n".join(map(str, failures))
    assert emulator.moves_received == 0  # nothing ever moved
