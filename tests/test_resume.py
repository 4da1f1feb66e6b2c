"""An interrupted training resumes: SIGKILL at any moment, a checkpoint write included.

The default run kills a tiny CartPole run twice inside checkpoint writes (tests/fault_injection.py)
and checks the mechanics on the Learner directly; the slow ones kill tiny CartPole and --sim runs
at seeded moments and inside learner.pt's write. After every kill the run resumes from its last checkpoint, ``metrics.csv``
never repeats or goes back, and ``best.safetensors`` never gets worse.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from policies.checkpoint import load_checkpoint
from policies.qlearning import (Learner, QLearningConfig, ResumeStateError, _keep_metrics_up_to, eval_rank,
                                train)
from policies.sequence_replay import SequenceReplay
from tests.test_learner import TINY

REPO = Path(__file__).resolve().parent.parent

#: Every 500 steps an eval, every 1000 a checkpoint: a few of each in a tiny run.
TINY_RUN = dict(d=16, n_layers=1, num_envs=1, steps_per_round=100, learning_starts=400, batch_size=4,
                eval_every_steps=500, eval_episodes=1, checkpoint_every_steps=1000)
TINY_TOML = tomli_w.dumps(TINY_RUN)
SIM_TOML = tomli_w.dumps({**TINY_RUN, "burn_in": 4, "train_len": 8})


@dataclass(frozen=True)
class Kill:
    """Where a launch is killed: inside the ``nth`` write of ``file`` (tests/fault_injection.py), or
    ``after_s`` seconds after it runs from a checkpoint (a new run: its first one is written; a
    resumed run: it said where it resumes)."""

    when: str = ""
    file: str = ""
    nth: int = 0
    after_s: float = 0.0


def _launch(train_args: list[str], kill: Kill | None, log: Path) -> subprocess.CompletedProcess:
    """One ``robotd train`` in its own process group, killed with all its actors as ``kill`` says
    (its output in ``log``.out / .err)."""
    if kill is not None and kill.when:
        cmd = [sys.executable, "-m", "tests.fault_injection", kill.when, kill.file, str(kill.nth), "--", *train_args]
    else:
        cmd = [sys.executable, "-m", "robotd.cli", "train", *train_args]
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
        if kill is not None and not kill.when:
            if "--resume" in train_args:
                def running() -> bool:
                    return "resuming at" in out.read_text()
            else:
                def running() -> bool:
                    return (Path(train_args[train_args.index("--out") + 1]) / "learner.pt").exists()
            deadline = time.monotonic() + 120
            while not running() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(kill.after_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished first
                pass
        proc.wait(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if None not in row.values()]


def _best_rank(run_dir: Path) -> tuple[float, float]:
    return eval_rank(load_checkpoint(run_dir / "best.safetensors")[1].metrics)


def _kill_and_resume(run_dir: Path, new_run: list[str], total_steps: int, kills: list[Kill]) -> None:
    """Launch ``new_run``, then ``--resume`` it, each launch killed by the next of ``kills``, until a
    last resume finishes; after every kill, check what the resumed run does with the directory."""
    resume = ["--resume", str(run_dir), "--no-progress"]
    launches = [new_run] + [resume] * len(kills)
    for i, (args, kill) in enumerate(zip(launches, kills + [None])):
        if i:
            checkpoint = SequenceReplay.stamp(run_dir / "replay.npz")  # replaced first: the newest checkpoint
            kept = [row for row in _metrics(run_dir) if int(row["env_steps"]) <= checkpoint]
            best = _best_rank(run_dir)
        out = _launch(args, kill, run_dir.parent / f"launch-{i}")
        if kill is not None and kill.when:
            assert out.returncode == -signal.SIGKILL, f"the fault was never reached: {out.stdout}{out.stderr}"
        if kill is None:
            assert out.returncode == 0 and f"done after {total_steps} env steps" in out.stdout, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        if not i:
            continue
        # The step counter goes on from the last checkpoint, the rows before it stay as they were,
        # every later row is new and in order, and best is never worse than before the kill.
        assert f"resuming at {checkpoint} env steps" in out.stdout, out.stdout + out.stderr
        rows = _metrics(run_dir)
        steps = [int(row["env_steps"]) for row in rows]
        assert rows[:len(kept)] == kept and steps == sorted(set(steps)), steps
        assert _best_rank(run_dir) >= best
    saved = torch.load(run_dir / "learner.pt", weights_only=False)
    assert saved["state"]["env_steps"] == SequenceReplay.stamp(run_dir / "replay.npz") == total_steps
    assert [int(row["env_steps"]) for row in _metrics(run_dir)][-1] == total_steps


def _new_run(tmp_path: Path, task: list[str], toml: str, total_steps: int) -> tuple[Path, list[str]]:
    (tmp_path / "tiny.toml").write_text(toml)
    run_dir = tmp_path / "run"
    return run_dir, [*task, "--steps", str(total_steps), "--seed", "3", "--out", str(run_dir),
                     "--config", str(tmp_path / "tiny.toml"), "--no-progress"]


def test_cartpole_killed_inside_checkpoint_writes_resumes(tmp_path):
    """The issue's --env case (config.toml's "none" read back on resume), killed in the replay's
    write (the previous pair stands), then between the two renames (the new pair is completed)."""
    run_dir, new_run = _new_run(tmp_path, ["--env", "CartPole-v1"], TINY_TOML, 2000)
    _kill_and_resume(run_dir, new_run, 2000, [Kill("mid-write", "replay.npz", 2),
                                              Kill("before-rename", "learner.pt", 1)])


@pytest.mark.slow
@pytest.mark.parametrize("task, toml", [(["--env", "CartPole-v1"], TINY_TOML), (["--sim"], SIM_TOML)],
                         ids=["cartpole", "sim"])
@pytest.mark.parametrize("seed", [0, 1])
def test_killed_at_seeded_moments_resumes(tmp_path, task, toml, seed):
    """Killed at seeded moments once it runs from a checkpoint, and inside learner.pt's write."""
    rng = np.random.default_rng(seed)
    run_dir, new_run = _new_run(tmp_path, task, toml, 12_000)
    kills = [Kill(after_s=float(rng.uniform(1.0, 6.0))), Kill("mid-write", "learner.pt", int(rng.integers(1, 3))),
             Kill(after_s=float(rng.uniform(1.0, 6.0)))]
    _kill_and_resume(run_dir, new_run, 12_000, kills)


# ------------------------------------------------------------------ the checks, on the Learner


def _tiny_learner(run_dir: Path) -> Learner:
    run_dir.mkdir(exist_ok=True)
    return Learner(QLearningConfig(**TINY), run_dir)


def test_a_learner_and_a_replay_of_two_checkpoints_are_never_mixed(tmp_path, capsys, monkeypatch):
    import policies.qlearning as qlearning

    learner = _tiny_learner(tmp_path)
    learner.save_resume_state()  # the pair at 0 steps
    # Killed between the two renames of the next checkpoint: the replay is at 500, learner.pt at
    # 0, and the whole learner of 500 waits in learner.pt.tmp: the checkpoint is completed.
    learner.state.env_steps = 500

    def killed(tmp: Path, path: Path) -> None:  # the learner's rename (the replay's is sequence_replay's)
        raise KeyboardInterrupt

    monkeypatch.setattr(qlearning, "replace_synced", killed)
    with pytest.raises(KeyboardInterrupt):
        learner.save_resume_state()
    monkeypatch.undo()
    resumed = _tiny_learner(tmp_path)
    resumed.load_resume_state()
    assert resumed.state.env_steps == 500 and not (tmp_path / "learner.pt.tmp").exists()
    assert capsys.readouterr().err.count("\n") == 1  # one line says so
    # A replay from another checkpoint and nothing to complete the pair with: refused, both named.
    learner.replay.save(tmp_path / "replay.npz", env_steps=700)
    with pytest.raises(ResumeStateError, match=r"learner\.pt is at 500 env steps but .*replay\.npz at 700"):
        _tiny_learner(tmp_path).load_resume_state()


@pytest.mark.parametrize("name, what", [("learner.pt", "learner state"), ("replay.npz", "replay")])
def test_a_damaged_resume_file_is_a_clear_error(tmp_path, capsys, name, what):
    from robotd.commands.train import main

    train(QLearningConfig(**{**TINY, "total_steps": 200}), tmp_path / "run", progress=False)
    path = tmp_path / "run" / name
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    # --steps: the run has had its whole budget, and the damage must be what stops the resume
    assert main(["--resume", str(tmp_path / "run"), "--steps", "100", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name}: cannot read the {what} to resume" in err, err


def test_a_replay_saved_before_stamping_resumes_with_a_warning(tmp_path, capsys):
    learner = _tiny_learner(tmp_path)
    learner.save_resume_state()
    with np.load(tmp_path / "replay.npz") as f:
        unstamped = {name: f[name] for name in f.files if name != "env_steps"}
    np.savez(tmp_path / "replay.npz", **unstamped)
    _tiny_learner(tmp_path).load_resume_state()
    assert "no step stamp" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_best_saved_after_its_checkpoint(tmp_path):
    """An eval after the last checkpoint may have written best.safetensors before a kill: a resumed
    run has to beat that one, not the older score in learner.pt."""
    run_dir = tmp_path / "run"
    train(QLearningConfig(**{**TINY, "total_steps": 600}), run_dir, progress=False)
    saved = torch.load(run_dir / "learner.pt", weights_only=False)
    saved["state"]["best_eval"] = (-np.inf, -np.inf)  # as a checkpoint from before the best eval
    torch.save(saved, run_dir / "learner.pt")
    resumed = Learner(QLearningConfig(**TINY), run_dir)
    resumed.load_resume_state()
    assert resumed.state.best_eval == _best_rank(run_dir) > (-np.inf, -np.inf)


def test_metrics_after_the_checkpoint_and_a_cut_row_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("env_steps,updates,loss\n0,0,\n500,3,0.5\n1000,9,0.4\n1500,12,0.3\n20")
    _keep_metrics_up_to(path, 1000)
    rows = list(csv.DictReader(path.open()))
    assert [row["env_steps"] for row in rows] == ["0", "500", "1000"] and rows[2]["loss"] == "0.4"
    assert path.read_text().splitlines()[0].startswith("env_steps,updates,minutes")  # today's columns
