"""Which optional extra of the package brings which module, and what a command says when one is missing.

The base install (``pip install robotd``) is what the robot's computer needs: the daemon, the
board emulator, replay and calibration. The simulator, training, plots and Foxglove come as
extras (``pyproject.toml``). A command that reaches for a module of a missing extra gets a
:class:`ModuleNotFoundError`; :func:`missing_extra_message` turns it into one line naming the
extra to install, and ``robotd``'s entry point prints that instead of a traceback.
``tests/test_extras.py`` checks this table against ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.util

EXTRA_OF_MODULE: dict[str, str] = {
    "mujoco": "sim",
    "gymnasium": "sim",
    "scipy": "sim",
    "imageio": "sim",
    "tqdm": "sim",
    "torch": "train",
    "optuna": "train",
    "matplotlib": "plot",
    "foxglove": "foxglove",
    "mcap": "foxglove",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "stable_baselines3": "bench",
}
"""Top-level module -> the extra that installs it (the first, where two do: tqdm is also in train)."""

DISTRIBUTION_OF_MODULE: dict[str, str] = {"foxglove": "foxglove-sdk"}
"""Where the PyPI name differs from the module's."""


def require_extra(extra: str) -> None:
    """Raise ModuleNotFoundError (named as :func:`missing_extra_message` reads it) for the first
    module of ``extra`` that is not installed, without importing any.

    For a command to call before its first side effect: finding out at the import deep inside
    it would leave a created file, or a printed report, behind the error.
    """
    for module, its_extra in EXTRA_OF_MODULE.items():
        if its_extra == extra and importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def missing_extra_message(exc: ModuleNotFoundError, command: str) -> str | None:
    """``robotd COMMAND: ... pip install 'robotd[EXTRA]'`` for a module an extra brings, else None."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return (f"robotd {command}: this needs {DISTRIBUTION_OF_MODULE.get(module, module)}, which is in the "
            f"'{extra}' extra, not the base install: pip install 'robotd[{extra}]'")
