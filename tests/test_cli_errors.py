"""What a user meets on the command line: clear one-line errors, nothing lost, no tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_logread import synthetic_run, write_log

from calibration import DEFAULT_CALIBRATION_PATH

REPO = Path(__file__).resolve().parents[1]


def _robotd(*argv: str, cwd: Path = REPO, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "robotd.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


def test_replay_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run.log", synthetic_run(300))
    proc = subprocess.Popen([sys.executable, "-m", "robotd.cli", "replay", str(log)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the report is written
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc == 141


def test_bad_calibration_under_port_sim_fails_at_once_like_on_hardware(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("max_slew_rad_s = 4.0", "max_slew_rad_s = -1.0"))
    t0 = time.monotonic()
    proc = _robotd("run", "--port", "sim", "--calibration", str(bad), "--log", "", "--duration", "2", cwd=tmp_path)
    elapsed_s = time.monotonic() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines == [f"robotd run: {bad}: safety.max_slew_rad_s: must be > 0, got -1.0"], proc.stderr
    assert elapsed_s < 30  # not the 60 s wait for a simulated robot that died


def test_rollout_checks_the_video_writer_before_rendering(tmp_path: Path) -> None:
    import importlib.util

    out = tmp_path / "x.mp4"
    t0 = time.monotonic()
    proc = _robotd("rollout", "--out", str(out), "--seconds", "30", cwd=tmp_path)
    elapsed_s = time.monotonic() - t0
    if importlib.util.find_spec("imageio_ffmpeg") or importlib.util.find_spec("av"):
        assert proc.returncode == 0  # a writer is installed here: the MP4 is written
        return
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install imageio-ffmpeg" in proc.stderr and not out.exists()
    assert "rollout ->" not in proc.stderr  # no progress bar: nothing was rendered
    assert elapsed_s < 60  # 30 s of video would take minutes to render
    proc = _robotd("rollout", "--out", str(tmp_path / "x.avi"), cwd=tmp_path)
    assert proc.returncode == 2 and ".gif, .mp4" in proc.stderr


@pytest.mark.parametrize("command", ["rollout", "export", "run"])
def test_help_explains_every_option(command: str) -> None:
    proc = _robotd(command, "--help")
    assert proc.returncode == 0 and "``" not in proc.stdout
    text = " ".join(proc.stdout.split())  # argparse wraps: compare with whitespace collapsed
    options = re.findall(r"^  (-[-\w]+|\w+)", proc.stdout, flags=re.M)
    assert len(options) >= 3
    for option in options:
        if option in ("-h",):
            continue
        # argparse prints "OPTION [METAVAR]  help": an option without help is followed
        # directly by the next option
        after = text.split(f" {option}", 1)[1].split(" --", 1)[0]
        words = [w for w in after.split() if not w.isupper() and not w.startswith("{")]
        assert len(words) >= 3, f"{command} {option} has no help: {after!r}"


def test_rollout_frames_are_captioned_with_policy_time_and_tilt(tmp_path: Path) -> None:
    """The same seeded rollout with and without a caption: frames differ (beyond GIF colour
    quantisation) only in the caption band, and the band changes from frame to frame (the
    time and tilt move)."""
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    import imageio.v2 as imageio
    import numpy as np

    from calibration import load_calibration
    from robotd.daemon.policy_select import load_policy
    from sim.env import BipedBalanceEnv, EnvConfig
    from sim.render import CAPTION_BAND_PX, write_rollout

    cal = load_calibration()
    policy = load_policy("pd", cal)
    videos = []
    for label in (None, policy.name):
        env = BipedBalanceEnv(EnvConfig(obs_spec=policy.spec), calibration=cal, render_mode="rgb_array",
                              render_size=(120, 160))
        out = write_rollout(env, policy.act, tmp_path / f"{label}.gif", seconds=0.4, fps=25, seed=0,
                            reset_fn=policy.reset, label=label)
        env.close()
        videos.append(np.stack(imageio.mimread(out))[..., :3].astype(int))
    plain, captioned = videos
    assert plain.shape == captioned.shape and len(plain) >= 5
    band = slice(0, CAPTION_BAND_PX)
    # GIF frames are palette-quantised, so the scene may shift by a colour step or so.
    scene_diff = np.abs(plain[:, CAPTION_BAND_PX + 2:] - captioned[:, CAPTION_BAND_PX + 2:]).mean()
    band_diff = np.abs(plain[:, band] - captioned[:, band]).mean()
    assert scene_diff < 2.0 and band_diff > 10 * max(scene_diff, 1.0), (scene_diff, band_diff)
    assert np.abs(captioned[0, band] - captioned[-1, band]).mean() > 1.0  # the time moved on


@pytest.mark.parametrize("command", [["run", "--log", ""], ["calibrate", "imu"], ["calibrate", "trim"]])
def test_every_sim_path_validates_the_calibration_first(tmp_path: Path, command: list[str]) -> None:
    """The same one-line error before the simulated robot starts, whichever command it is."""
    bad = tmp_path / "typo.toml"
    bad.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("max_slew_rad_s = 4.0", "max_slew_rads = 1.0"))
    proc = _robotd(*command, "--port", "sim", "--calibration", str(bad), cwd=tmp_path, timeout_s=60)
    assert proc.returncode == 2, proc.stderr
    assert "starting the simulated robot" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"{bad}: safety.max_slew_rads: unknown key 'max_slew_rads'; did you mean 'max_slew_rad_s'?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.toml"]  # no log, no copy, nothing


@pytest.fixture
def corrupted_balance(tmp_path: Path) -> Path:
    """A copy of the shipped policy with four bytes of one weight overwritten by 0xFF (a NaN)."""
    import struct

    from robotd.daemon.policy_select import SHIPPED_POLICIES

    raw = bytearray(SHIPPED_POLICIES["balance"].read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    start = 8 + header_len + 4 * 1000
    raw[start:start + 4] = b"\xff" * 4
    path = tmp_path / "balance-copy.safetensors"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("argv", [
    ["run", "--port", "sim", "--log", "", "--duration", "1", "--policy", "CKPT"],
    ["eval", "CKPT", "--sim", "--episodes", "1"],
    ["rollout", "--policy", "CKPT", "--out", "TMP/x.gif"],
    ["export", "CKPT", "--onnx", "TMP/x.onnx"],
    ["replay", "TMP/run.log", "--rerun", "--policy", "CKPT"],
], ids=["run", "eval", "rollout", "export", "rerun"])
def test_a_corrupted_checkpoint_is_refused_in_one_line_before_anything_moves(
        tmp_path: Path, corrupted_balance: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    from robotd.cli import main

    write_log(tmp_path / "run.log", synthetic_run(20))
    argv = [a.replace("CKPT", str(corrupted_balance)).replace("TMP", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(corrupted_balance) in lines[0], captured.err
    assert "has 1 non-finite value(s): refused" in lines[0], captured.err
    assert captured.out == "" and not list(tmp_path.glob("x.*"))


def test_udp_address_problems_are_named_before_the_board_is_opened(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from robotd.cli import main

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        no_board = tmp_path / "no-board"  # the serial handshake would fail: the address is checked first
        assert main(["run", "--port", str(no_board), "--udp", f"127.0.0.1:{port}", "--log", "",
                     "--policy", "hold"]) == 2
    assert capsys.readouterr().err == f"robotd run: --udp 127.0.0.1:{port}: cannot listen there (Address already in use)\n"
    # Under --port sim too: an unusable host is refused, not silently replaced by the simulator's.
    assert main(["run", "--port", "sim", "--udp", "no-such-host.invalid:5555", "--log", "", "--duration", "1",
                 "--policy", "hold"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robotd run: --udp no-such-host.invalid:5555: unknown host (") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["eval", "pd", "--env", "CartPole-v1"],
     "robotd eval: pd is a robot policy (robotd eval pd --sim); --env CartPole-v1 needs a checkpoint trained there "
     "(robotd train --env CartPole-v1)"),
    (["eval", "pdd", "--sim"], "robotd eval: 'pdd': not a built-in policy (balance, hold, pd) and no such file"),
    (["run", "--port", "sim", "--policy", "pdd", "--log", ""],
     "robotd run: --policy 'pdd': not a built-in policy (balance, hold, pd) and no such file"),
], ids=["eval-env", "eval-positional", "run-flag"])
def test_a_bad_policy_is_named_as_the_command_line_names_it(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                            message: str) -> None:
    from robotd.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.parametrize("argv", [
    ["replay", "LOG", "--mcap", "OUT"],
    ["replay", "LOG", "--plot", "OUT"],
    ["replay", "LOG", "--rerun", "--policy", "hold", "--plot", "OUT"],
    ["rollout", "--policy", "hold", "--seconds", "0.2", "--out", "OUT"],
    ["export", "CKPT", "--onnx", "OUT"],
], ids=["replay-mcap", "replay-plot", "rerun-plot", "rollout", "export"])
def test_an_existing_output_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     argv: list[str]) -> None:
    from daemon_harness import write_random_rwkv_checkpoint

    from robotd.cli import main

    log = write_log(tmp_path / "run.log", synthetic_run(20))
    checkpoint = write_random_rwkv_checkpoint(tmp_path / "c.safetensors") if "CKPT" in argv else None
    out = tmp_path / ("out" + {"--mcap": ".mcap", "--onnx": ".onnx"}.get(argv[-2], ".gif" if "rollout" in argv
                                                                          else ".png"))
    out.write_bytes(b"an hour's result")
    argv = [{"LOG": str(log), "CKPT": str(checkpoint), "OUT": str(out)}.get(a, a) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"robotd {argv[0]}: {argv[-2]} {out}: already exists (--force replaces it)\n"
    assert captured.out == "" and out.read_bytes() == b"an hour's result"
    assert main([*argv, "--force"]) == 0
    assert out.read_bytes() != b"an hour's result"
