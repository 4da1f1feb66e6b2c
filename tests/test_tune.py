"""robotd tune on tiny budgets: the learner study in the simulator (resumable, best TOML,
pruning hook), the PD-gains ask/tell loop against the simulated robot (known-good first, a
fall as a violated constraint, Ctrl-C), and two workers sharing one study in a real PostgreSQL.

Scores are not checked here (bench/tune.py and docs/tuning.md): these check the mechanics.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from policies.baselines import PdGains, PdPolicy, parse_pd_spec, pd_spec
from policies.qlearning import QLearningConfig, train
from policies.evaluation import EVAL_SEED
from policies.tuning import LEARNER_SPACE, TUNING_EVAL_SEED, known_good_pd_params, learner_config, learner_params
from robotd.logs.logread import read_log
from robotd.daemon.policy_select import PolicyLoadError, load_policy
from robotd.commands.train import _parser as train_parser
from robotd.commands.train import resolve_config
from sim.robot_process import SimRobotConfig, push_rng
from tests.daemon_harness import free_udp_port

REPO = Path(__file__).resolve().parent.parent

#: A base config small enough that a trial of a few hundred steps trains and evaluates.
TINY_BASE = """learning_starts = 200
batch_size = 4
eval_episodes = 1
eval_every_steps = 200
checkpoint_every_steps = 1000000
steps_per_round = 100
num_envs = 1
d = 16
n_layers = 1
train_len = 10
burn_in = 5
"""


def _robotd(*args: str, timeout: float = 240.0, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


# ------------------------------------------------------------------ the learner


def test_learner_space_round_trips_and_keeps_burn_in_within_train_len():
    base = QLearningConfig()
    params = learner_params(base)
    assert set(params) == set(LEARNER_SPACE)
    assert learner_config(params, base) == base  # the defaults are a point of the space
    for name, value in params.items():
        knob = LEARNER_SPACE[name]
        assert knob.low <= value <= knob.high, name
    cfg = learner_config({**params, "train_len": 10, "burn_in_fraction": 1.0}, base)
    assert cfg.burn_in == 10 and cfg.train_len == 10


def test_on_eval_hook_ends_a_training_run(tmp_path):
    cfg = QLearningConfig(env_id="CartPole-v1", initial_greedy_bin=None, total_steps=1200, learning_starts=200,
                          num_envs=1, steps_per_round=100, burn_in=2, train_len=4, batch_size=4,
                          eval_every_steps=300, eval_episodes=1, checkpoint_every_steps=10_000, d=16, n_layers=1)
    seen = []
    info = train(cfg, tmp_path / "run", progress=False, on_eval=lambda state, ev: seen.append(state.env_steps) or True)
    assert seen == [300] and info.state.env_steps == 300 and not info.interrupted
    assert (tmp_path / "run" / "last.safetensors").exists()


def test_tune_sim_resumes_the_study_and_writes_a_config_train_takes(tmp_path):
    (tmp_path / "base.toml").write_text(TINY_BASE)
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    common = ["tune", "--sim", "--steps-per-trial", "400", "--storage", storage, "--config",
              str(tmp_path / "base.toml"), "--out", str(tmp_path / "out"), "--sampler-seed", "1"]
    first = _robotd(*common, "--trials", "2")
    assert first.returncode == 0, first.stderr
    trials = _trials(storage, "learner")
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # The first trial of a new study is the base config itself.
    base = QLearningConfig.from_dict({**QLearningConfig().to_dict(), **tomllib.loads((tmp_path / "base.toml").read_text())})
    assert trials[0].params == pytest.approx(learner_params(base))
    # Each eval of a trial is an intermediate value at its env step (what the pruner looks at).
    assert sorted(trials[0].intermediate_values) == [200, 400]
    # A second invocation continues the same study.
    second = _robotd(*common, "--trials", "1")
    assert second.returncode == 0, second.stderr
    assert "(2 trials so far)" in second.stdout
    trials = _trials(storage, "learner")
    assert [t.number for t in trials] == [0, 1, 2] and trials[2].params != trials[0].params
    # The best config loads as a training config and reproduces its trial (choosing its checkpoint
    # on the tuning episodes, as every training run does, never on the reported ones).
    best_toml = tmp_path / "out" / "best.toml"
    cfg = QLearningConfig.from_dict(tomllib.loads(best_toml.read_text()), source=str(best_toml))
    best = optuna.load_study(study_name="learner", storage=storage).best_trial
    assert cfg.lr == pytest.approx(best.params["lr"]) and cfg.n_step == best.params["n_step"]
    assert cfg.eval_seed == TUNING_EVAL_SEED != EVAL_SEED and cfg.burn_in <= cfg.train_len
    # `robotd train --config` takes it unchanged: the CLI's own resolution, short of training.
    args = train_parser().parse_args(["--sim", "--config", str(best_toml), "--out", str(tmp_path / "t")])
    resolved, _, _ = resolve_config(args)
    assert resolved == cfg


def test_tune_sim_records_a_crashed_trial_as_failed(tmp_path):
    # A base config that passes the TOML check but fails inside train(): bin 7 of 5.
    (tmp_path / "base.toml").write_text(TINY_BASE + "initial_greedy_bin = 7\n")
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    out = _robotd("tune", "--sim", "--trials", "1", "--steps-per-trial", "200", "--storage", storage,
                  "--config", str(tmp_path / "base.toml"), "--out", str(tmp_path / "out"))
    assert "no completed trial yet" in out.stdout, out.stdout + out.stderr
    (trial,) = _trials(storage, "learner")
    assert trial.state == optuna.trial.TrialState.FAIL


def _heartbeats(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]


def _tune_until(args: list[str], db: Path, trial: int, log: Path) -> None:
    """``robotd tune ARGS`` until trial ``trial`` runs and has a heartbeat (a trial killed before its
    first one is never found stale), then SIGKILL it with its actors, as a power cut would."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "robotd.cli", "tune", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while (f"trial {trial}:" not in log.read_text() or _heartbeats(db) <= trial) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()


def _a_minute_later(db: Path) -> None:
    """Age every heartbeat past the 60 s grace period, as if the next worker started a minute later."""
    import sqlite3

    with sqlite3.connect(db) as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-2 minutes')")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_tuning_trial_is_tried_again_once(tmp_path):
    """SIGKILL mid-trial: the next worker fails the trial (stale heartbeat) and runs its setting again
    first; the retry killed too is not enqueued a third time."""
    from policies.tuning import RETRY_OF, make_sampler, open_study

    (tmp_path / "base.toml").write_text(TINY_BASE)
    db = tmp_path / "tune.db"
    args = ["--sim", "--trials", "3", "--steps-per-trial", "400", "--storage", f"sqlite:///{db}", "--config",
            str(tmp_path / "base.toml"), "--out", str(tmp_path / "out"), "--sampler", "random"]
    _tune_until(args, db, 0, tmp_path / "first.log")
    _a_minute_later(db)
    _tune_until(args, db, 1, tmp_path / "second.log")
    killed, retry = _trials(f"sqlite:///{db}", "learner")
    assert killed.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.RUNNING
    assert retry.params == killed.params and retry.user_attrs[RETRY_OF] == 0
    _a_minute_later(db)
    study = open_study(f"sqlite:///{db}", "learner", make_sampler("random", 0, 1))
    optuna.storages.fail_stale_trials(study)  # what the next worker does before its next trial
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2  # nothing enqueued


def test_an_interrupted_tuning_trial_is_tried_again_once(tmp_path, monkeypatch):
    """Ctrl-C in a trial's training: failed, its setting enqueued; the retry interrupted too is not."""
    import policies.qlearning
    from policies.qlearning import RunInfo, TrainState
    from policies.tuning import learner_objective, make_sampler, open_study

    monkeypatch.setattr(policies.qlearning, "train",
                        lambda cfg, run_dir, **_: RunInfo(run_dir, TrainState(), interrupted=True))
    study = open_study(f"sqlite:///{tmp_path / 'tune.db'}", "learner", make_sampler("random", 0, 1))
    objective = learner_objective(QLearningConfig(), tmp_path / "out", 0, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    interrupted, waiting = study.get_trials()
    assert interrupted.state == optuna.trial.TrialState.FAIL and interrupted.user_attrs["interrupted"]
    assert waiting.state == optuna.trial.TrialState.WAITING and waiting.system_attrs["fixed_params"] == interrupted.params
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2
    assert study.get_trials()[1].params == interrupted.params


# ------------------------------------------------------------------ on the (simulated) robot


def test_pd_spec_round_trips_and_rejects_bad_text():
    gains = PdGains(kp_hip=0.812345678, kd_ankle=0.0)
    assert parse_pd_spec(pd_spec(gains)) == gains
    assert parse_pd_spec("pd:kp_hip=1") == PdGains(kp_hip=1.0)
    for bad in ("pd:kp=1", "pd:kp_hip", "pd:kp_hip=x", "pd:kp_hip=nan"):
        with pytest.raises(ValueError):
            parse_pd_spec(bad)
    # What the daemon runs for --policy pd:..., and a clear error naming the bad gain.
    policy = load_policy(pd_spec(gains), load_calibration())
    assert isinstance(policy, PdPolicy) and policy.gains == gains and policy.identity == pd_spec(gains)
    with pytest.raises(PolicyLoadError, match="'kp=1' is not GAIN=VALUE"):
        load_policy("pd:kp=1", load_calibration())


def test_pd_deadband_acts_on_the_tilt_beyond_it_and_keeps_the_old_identity_without_one():
    """Inside the deadband only the rate term acts; outside, the tilt shortened by it along its direction."""
    import math

    import numpy as np

    from sim.observation import ObservationSpec, pitch_roll_rad

    assert pd_spec(PdGains()) == "pd:kp_hip=0.6,kp_ankle=0.1,kd_hip=0.03,kd_ankle=0.03"  # as logs name it
    banded = PdGains(kp_hip=0.6, kp_ankle=0.1, kd_hip=0.0, kd_ankle=0.0, deadband_rad=0.1)
    assert parse_pd_spec(pd_spec(banded)) == banded
    with pytest.raises(ValueError, match="deadband_rad must be >= 0"):
        parse_pd_spec("pd:deadband_rad=-0.1")
    spec = ObservationSpec()
    plain, with_band = PdPolicy(spec, replace(banded, deadband_rad=0.0)), PdPolicy(spec, banded)

    def obs_tilted(pitch_rad: float) -> np.ndarray:
        obs = np.zeros(spec.size)
        obs[0:3] = (math.sin(pitch_rad), 0.0, -math.cos(pitch_rad))  # gravity in the torso frame
        return obs

    for pitch in (0.05, 0.3):
        assert pitch_roll_rad(obs_tilted(pitch)[0:3])[0] == pytest.approx(pitch)
        expected = plain.act(obs_tilted(math.copysign(max(0.0, pitch - 0.1), pitch)))
        np.testing.assert_allclose(with_band.act(obs_tilted(pitch)), expected, atol=1e-9)
    assert np.all(with_band.act(obs_tilted(0.05)) == 0.0) and np.any(with_band.act(obs_tilted(0.3)) != 0.0)


def _sim_calibration(directory: Path) -> Path:
    """A 300 ms start-up move, and a fall rule at 15 degrees: on its string the simulated robot
    never tilts to 45, but bad gains do lean past 15."""
    path = directory / "robot.toml"
    text = DEFAULT_CALIBRATION_PATH.read_text()
    assert "startup_move_ms = 2000" in text and "fall_tilt_deg = 45.0" in text
    path.write_text(text.replace("startup_move_ms = 2000", "startup_move_ms = 300")
                    .replace("fall_tilt_deg = 45.0", "fall_tilt_deg = 15.0"))
    return path


def _gentle_sim_seed(horizon_s: float = 10.0, max_push_n: float = 3.0) -> int:
    """A sim seed whose pushes within the trials are all mild: the known-good gains ride them out
    even at this test's 15° fall limit, so only the bad gains fall (the pushes are the seed's)."""
    pushes = SimRobotConfig().pushes
    assert pushes is not None
    return next(seed for seed in range(1000)
                if max((p.magnitude_n for p in pushes.schedule(push_rng(seed), horizon_s)), default=0.0) < max_push_n)


def _robot_args(tmp_path: Path, storage: str, seconds: float) -> list[str]:
    return ["tune", "--port", "sim", "--yes", "--seconds-per-trial", str(seconds), "--storage", storage,
            "--calibration", str(_sim_calibration(tmp_path)), "--udp", f"127.0.0.1:{free_udp_port()}",
            "--out", str(tmp_path / "out"), "--sampler-seed", "3", "--sim-seed", str(_gentle_sim_seed())]


BAD_GAINS = {"kp_hip": 1.5, "kp_ankle": 0.6, "kd_hip": 0.1, "kd_ankle": 0.1}


def test_tune_port_sim_end_to_end(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    out = _robotd(*_robot_args(tmp_path, storage, 4.0), "--trials", "2")
    assert out.returncode == 0, out.stderr
    trials = _trials(storage, "pd-gains")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].params == known_good_pd_params()  # known-good first (the tuned gains, no deadband)
    for t in trials:
        log = read_log(t.user_attrs["log"])
        assert log.header["policy"]["identity"] == t.user_attrs["policy"] == pd_spec(PdGains(**t.params))
        assert log.summary is not None and log.summary["stop_reason"] in ("duration", "fall")
        assert 0.0 <= t.user_attrs["upright_fraction"] <= 1.0 and "sim_ground_truth_upright_s" in t.user_attrs
    assert not trials[0].user_attrs["fell"] and trials[0].constraints == {"fall": 0.0}
    assert "robotd run --policy pd:" in out.stdout
    # Gains that lean the robot past the fall rule: the daemon stops at the fall, in the safe
    # pose, and the trial is a violated constraint.
    optuna.load_study(study_name="pd-gains", storage=storage).enqueue_trial(BAD_GAINS)
    out = _robotd(*_robot_args(tmp_path, storage, 6.0), "--trials", "1")
    assert out.returncode == 0, out.stderr
    bad = _trials(storage, "pd-gains")[2]
    assert bad.params == BAD_GAINS and bad.user_attrs["fell"] and bad.constraints == {"fall": 1.0}, bad.user_attrs
    log = read_log(bad.user_attrs["log"])
    assert log.summary["stop_reason"] == "fall" and log.summary["falls"] == 1
    # The run ended at the fall, whose tick is the safety layer's timed move to the safe pose
    # (the shutdown after it, which sends the safe pose again, writes the summary line).
    assert log.n_ticks < 6.0 * 50 * 0.9 and log.mode_is("fallen")[-1] and log.has_flag("fall")[-1]
    assert bad.user_attrs["upright_s"] < bad.user_attrs["window_s"]
    best = optuna.load_study(study_name="pd-gains", storage=storage).best_trial
    assert best.number != 2


def test_tune_port_sim_ctrl_c_leaves_it_safe_and_resumable(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "robotd.cli", *_robot_args(tmp_path, storage, 60.0),
                             "--trials", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log_path = tmp_path / "out" / "trial-0000.log"
        while time.monotonic() < deadline and not (log_path.exists() and log_path.stat().st_size > 100_000):
            time.sleep(0.2)  # the daemon is past its start-up and following the policy
        assert log_path.exists(), "trial 0 never started"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted: the robot is in its safe pose" in stdout
    log = read_log(log_path)
    # The summary line is written after the safety layer's shutdown (the timed move to the safe pose).
    assert log.summary["stop_reason"] == "signal" and log.mode_is("run")[-1]
    trials = _trials(storage, "pd-gains")
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert trials[0].user_attrs["failed"] == "interrupted"
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # enqueued again
    # The same command the next day starts with the interrupted setting.
    out = _robotd(*_robot_args(tmp_path, storage, 2.0), "--trials", "1")
    assert out.returncode == 0, out.stderr
    trials = _trials(storage, "pd-gains")
    assert trials[1].state == optuna.trial.TrialState.COMPLETE and trials[1].params == trials[0].params
    assert len(trials) == 2  # no second known-good trial: the study was not new


# ------------------------------------------------------------------ two workers, one PostgreSQL


def _postgres_bin() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        if shutil.which(name) is None:
            break
    else:
        return Path(shutil.which("initdb")).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server in a temporary data directory on a free port of 127.0.0.1."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them")
    # The server refuses to run as root: run it as the postgres user (or whoever we are).
    user = None
    if os.geteuid() == 0:
        import pwd

        user = "postgres" if "postgres" in {p.pw_name for p in pwd.getpwall()} else "nobody"
    as_user = ["runuser", "-u", user, "--"] if user else []
    data = Path(tempfile.mkdtemp(prefix="robotd-pg-"))
    if user:
        shutil.chown(data, user)
    port = _free_tcp_port()

    def pg(*cmd: str) -> None:
        subprocess.run(as_user + list(cmd), check=True, capture_output=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "tuner", "--auth=trust")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "server.log"), "-w", "-t", "60",
           "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
        yield f"postgresql://tuner@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study_in_postgresql(tmp_path, postgres_url):
    (tmp_path / "base.toml").write_text(TINY_BASE)
    per_worker = 2
    workers = [subprocess.Popen([sys.executable, "-m", "robotd.cli", "tune", "--sim", "--trials", str(per_worker),
                                 "--steps-per-trial", "200", "--storage", postgres_url, "--study", "shared",
                                 "--config", str(tmp_path / "base.toml"), "--out", str(tmp_path / f"w{i}"),
                                 "--sampler-seed", str(i)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (stdout, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stdout + stderr
    # What each worker says it ran (its "trial N:" start lines), against what the storage holds.
    ran = [sorted({int(line.split(":")[0].split()[1]) for line in stdout.splitlines()
                   if line.startswith("trial ") and "->" in line}) for stdout, _ in outputs]
    trials = _trials(postgres_url, "shared")
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == 2 * per_worker  # recorded once each, none lost
    assert sorted(numbers) == list(range(2 * per_worker))
    assert all(len(r) == per_worker for r in ran) and not set(ran[0]) & set(ran[1])
    assert sorted(ran[0] + ran[1]) == numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Each trial's run directory is its own (trial numbers name them).
    for i, r in enumerate(ran):
        assert sorted(p.name for p in (tmp_path / f"w{i}").glob("trial-*")) == [f"trial-{n:04d}" for n in r]


def test_bad_storage_and_a_study_of_the_other_problem_are_clear_errors(tmp_path):
    out = _robotd("tune", "--sim", "--trials", "1", "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert out.returncode == 2 and "--storage postgresql://nobody@127.0.0.1:1/none: connection" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    optuna.create_study(storage=storage, study_name="mine").set_user_attr("problem", "learner")
    out = _robotd("tune", "--port", "sim", "--yes", "--trials", "1", "--storage", storage, "--study", "mine")
    assert out.returncode == 2 and "that study tunes learner, not pd-gains" in out.stderr, out.stderr


def test_the_learner_objective_prunes_through_the_training_hook(tmp_path):
    from policies.tuning import learner_objective

    base = QLearningConfig.from_dict({**tomllib.loads(TINY_BASE), "total_steps": 600})
    # A pruner that prunes at the first report: the trial must stop training right there.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=10.0))
    study.optimize(learner_objective(base, tmp_path, 1000, log=lambda line: None), n_trials=1)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [200]
    rows = (tmp_path / "trial-0000" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "200"]  # the untrained eval, one more, then the run ended


def test_a_minutes_budget_that_ends_between_evals_scores_the_last_weights(tmp_path):
    from policies.tuning import LearnerBudget, learner_objective

    base = QLearningConfig.from_dict({**tomllib.loads(TINY_BASE), "eval_every_steps": 10**6})
    study = optuna.create_study(direction="maximize")
    study.optimize(learner_objective(LearnerBudget(minutes=0.05).apply(base), tmp_path, 1000,
                                     log=lambda line: None), n_trials=1)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial
    (steps,) = trial.intermediate_values  # no periodic eval ran: one final eval of last.safetensors
    assert 0 < steps < 10**6 and trial.value == trial.intermediate_values[steps]


def test_the_operator_is_told_the_setting_and_q_stops_resumably(tmp_path):
    import io

    from robotd.daemon.run import RunConfig
    from robotd.commands.robot_tuning import RobotTuneConfig, recover_abandoned, tune_on_robot

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'tune.db'}", direction="maximize")
    # A trial a killed session left running: failed, and its setting comes first next time.
    orphan = study.ask({"kp_hip": optuna.distributions.FloatDistribution(0.0, 1.5)})
    recover_abandoned(study, io.StringIO())
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert study.trials[-1].state == optuna.trial.TrialState.WAITING
    prompts, out = [], io.StringIO()
    cfg = RobotTuneConfig(RunConfig(port="/dev/null-no-board"), trials=3, seconds_per_trial=5.0, out_dir=tmp_path)
    rc = tune_on_robot(study, cfg, out=out, ask=lambda prompt: prompts.append(prompt) or "q")
    assert rc == 0 and len(prompts) == 1 and "Enter to run 5 s" in prompts[0]
    asked = study.trials[-2]  # the retried orphan's setting ran first (the known-good one was not enqueued)
    assert asked.params["kp_hip"] == orphan.params["kp_hip"] and asked.state == optuna.trial.TrialState.FAIL
    assert f"trial {asked.number}: --policy pd:kp_hip=" in out.getvalue()
    assert study.trials[-1].state == optuna.trial.TrialState.WAITING  # and it is enqueued again


def test_without_the_train_extra_tune_names_it(tmp_path):
    code = ("import sys\nsys.modules['optuna'] = None\nfrom robotd.cli import main\n"
            "sys.exit(main(['tune', '--sim', '--trials', '1']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "pip install 'robotd[train]'" in out.stderr and "Traceback" not in out.stderr, \
        out.stderr
