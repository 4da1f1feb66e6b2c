"""The dependency split: robotd/commands/extras.py's table agrees with pyproject.toml, and commands name the extra they miss."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from robotd.commands.extras import DISTRIBUTION_OF_MODULE, EXTRA_OF_MODULE

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_table_matches_pyproject() -> None:
    extras = PROJECT["optional-dependencies"]
    base = _names(PROJECT["dependencies"])
    for module, extra in EXTRA_OF_MODULE.items():
        dist = canonicalize_name(DISTRIBUTION_OF_MODULE.get(module, module))
        assert dist in _names(extras[extra]), f"{module}: {dist} is not in [{extra}]"
        assert dist not in base, f"{dist} is in the base install but the table calls it an extra"
    assert not base & {"torch", "mujoco", "gymnasium", "optuna", "scipy", "matplotlib"}


def test_test_extra_brings_every_extra_and_torch_2_13_fits() -> None:
    extras = PROJECT["optional-dependencies"]
    own = [Requirement(r) for r in extras["test"] if canonicalize_name(Requirement(r).name) == "robotd"]
    assert len(own) == 1 and own[0].extras == set(extras) - {"test"}  # bench too: a test runs an SB3 peer
    torch = next(Requirement(r) for r in extras["train"] if Requirement(r).name == "torch")
    assert torch.specifier.contains("2.13.0")  # the README installs torch==2.13.0


def _blocked(modules: tuple[str, ...], argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``robotd ARGV`` in a fresh interpreter where ``modules`` cannot be imported (as without their extra)."""
    code = ("import sys\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            "from robotd.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("modules,argv,extra", [
    (("torch",), ["export", "CKPT", "--onnx"], "train"),
    (("mujoco",), ["rollout", "--policy", "pd", "--out", "x.gif"], "sim"),
    (("matplotlib",), ["replay", "LOG", "--plot", "x.png"], "plot"),
    (("foxglove",), ["replay", "LOG", "--mcap", "x.mcap"], "foxglove"),
    (("foxglove",), ["run", "--port", "/dev/null", "--log", "", "--foxglove"], "foxglove"),
], ids=["export", "rollout", "replay-plot", "replay-mcap", "run-foxglove"])
def test_missing_extra_is_named(tmp_path: Path, modules: tuple[str, ...], argv: list[str], extra: str) -> None:
    (tmp_path / "l.log").write_text('{"type":"header","schema":1}\n')
    (tmp_path / "c.safetensors").write_bytes(b"")
    argv = [{"LOG": str(tmp_path / "l.log"), "CKPT": str(tmp_path / "c.safetensors")}.get(a, a) for a in argv]
    result = _blocked(modules, argv, REPO)
    assert result.returncode == 2, result.stderr
    assert f"'{extra}' extra" in result.stderr and f"pip install 'robotd[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("modules,argv,extra", [
    (("mujoco",), ["calibrate", "imu", "--port", "sim"], "sim"),
    (("matplotlib",), ["replay", "LOG", "--plot", "x.png"], "plot"),
    (("foxglove",), ["replay", "LOG", "--mcap", "x.mcap"], "foxglove"),
    (("matplotlib",), ["replay", "LOG", "--rerun", "--policy", "hold", "--plot", "x.png"], "plot"),
], ids=["calibrate-imu-sim", "replay-plot", "replay-mcap", "rerun-plot"])
def test_a_missing_extra_is_named_before_any_side_effect(tmp_path: Path, modules: tuple[str, ...], argv: list[str],
                                                         extra: str) -> None:
    """No calibration file created from the template, no report printed, and then the error."""
    import os

    from test_logread import synthetic_run, write_log

    log = write_log(tmp_path / "run.log", synthetic_run(20))
    config_home = tmp_path / "config"
    code = ("import sys\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            "from robotd.cli import main\n"
            f"sys.exit(main({[str(log) if a == 'LOG' else a for a in argv]!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "XDG_CONFIG_HOME": str(config_home)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"pip install 'robotd[{extra}]'"), result.stderr
    assert result.stdout == "" and not config_home.exists() and not list(tmp_path.glob("x.*"))
