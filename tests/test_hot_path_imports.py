"""The daemon's hot path must not import torch or MuJoCo (start-up time, memory, the real robot).

The rule, as ``robotd/daemon/__init__.py`` states it: no module under ``robotd.daemon`` imports
torch, MuJoCo, gymnasium or optuna, or anything from the commands (``robotd.commands``,
``robotd.cli``), neither at its top nor inside a function. Two checks: what importing them
loads (everything they pull in, ``robotd.phone``, ``robotd.board`` and ``robotd.logs``
included), and what their source names (the imports that only run later, e.g. on a checkpoint
policy or ``--foxglove``, which the first check cannot see).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import robotd
import robotd.daemon

HEAVY = ("torch", "mujoco", "gymnasium", "optuna")
COMMANDS = ("robotd.commands", "robotd.cli")
DAEMON_MODULES = sorted(m.name for m in pkgutil.walk_packages(robotd.daemon.__path__, "robotd.daemon."))


def _forbidden(name: str) -> bool:
    return name.partition(".")[0] in HEAVY or any(name == c or name.startswith(c + ".") for c in COMMANDS)


def test_daemon_and_checkpoint_runtime_import_neither_torch_nor_mujoco() -> None:
    code = (
        "import sys\n"
        "import robotd.daemon.run, robotd.cli, robotd.daemon.policy_select, policies.runtime, policies.checkpoint\n"
        "heavy = sorted(m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"hot path imported: {out}"


def test_the_daemon_package_loads_no_heavy_module_and_no_command() -> None:
    assert "robotd.daemon.run" in DAEMON_MODULES and "robotd.daemon.safety" in DAEMON_MODULES
    code = (
        "import importlib, sys\n"
        f"for name in {DAEMON_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in loaded if _forbidden(m)] == []


def _imports(path: Path) -> list[str]:
    """Every module a source file imports, at top level or inside a function (``from a import b``
    gives ``a`` and ``a.b``: b may be a submodule)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


def test_no_module_of_the_daemon_package_names_a_heavy_module_or_a_command() -> None:
    found = []
    for name in DAEMON_MODULES:
        path = Path(robotd.daemon.__file__).parent / (name.rpartition(".")[2] + ".py")
        found += [f"{name}: imports {imported}" for imported in _imports(path) if _forbidden(imported)]
    assert found == []


#: The layers, lowest first: a package may import only from itself and the ones before it.
LAYERS = ("calibration", "sim", "policies", "robotd")


def test_the_layers_point_one_way() -> None:
    """calibration <- sim <- policies <- robotd: no module imports from a layer above its own."""
    root = Path(robotd.__file__).parent.parent
    found = []
    for rank, layer in enumerate(LAYERS):
        above = LAYERS[rank + 1:]
        for path in sorted((root / layer).rglob("*.py")):
            found += [f"{path.relative_to(root)}: imports {imported}" for imported in _imports(path)
                      if imported.partition(".")[0] in above]
    assert found == []
