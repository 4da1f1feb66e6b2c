"""The learner's mechanics on tiny budgets: targets, burn-in, stored states, episode bounds, resume.

Scores are not checked here (that is bench/ and docs/learning.md); these check that the
pieces do what the algorithm says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.actors import Actor, ActorSpec, UnsupportedEnvError, action_coding
from policies.checkpoint import ArchConfig, CheckpointMeta, load_checkpoint
from policies.networks import build_network
from policies.qlearning import (QLearningConfig, inverse_value_rescale, n_step_targets, sequence_loss, train,
                                value_rescale)
from policies.runtime import RUNTIMES
from policies.sequence_replay import SequenceBuilder, SequenceLayout, SequenceReplay

REPO = Path(__file__).resolve().parent.parent


def test_n_step_targets_by_hand():
    gamma, n = 0.5, 2
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    length = torch.tensor([3, 4])
    terminal = torch.tensor([True, False])
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    targets, valid = n_step_targets(rewards, length, terminal, boot, gamma, n)
    # Sequence 0 (3 steps, ends the episode): step 0: 1 + .5*2 + .25*boot[2]; step 1: 2 + .5*3 + .25*0
    # (slot 3 is terminal); step 2: 3 + .5*0 (one reward left, terminal).
    expected0 = [1 + 1 + 0.25 * 30, 2 + 1.5, 3.0, 0.0]
    # Sequence 1 (4 steps, not terminal): steps 0-2 bootstrap 2 slots on; step 3 one slot on (slot 4).
    expected1 = [1 + 0.5 + 0.25 * 3, 1 + 0.5 + 0.25 * 4, 1 + 0.5 + 0.25 * 5, 1 + 0.5 * 5]
    torch.testing.assert_close(targets, torch.tensor([expected0, expected1]))
    assert valid.tolist() == [[True, True, True, False], [True] * 4]


def test_value_rescaling_round_trips():
    x = torch.linspace(-500, 500, 1001, dtype=torch.float64)
    torch.testing.assert_close(inverse_value_rescale(value_rescale(x)), x, rtol=1e-9, atol=1e-6)


def _batch(arch: ArchConfig, layout: SequenceLayout, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = layout.train_len
    net = build_network(arch)
    return {
        "obs": torch.randn(b, layout.obs_slots, arch.obs_dim, generator=g),
        "actions": torch.randint(0, arch.n_bins, (b, t, arch.n_actions), generator=g),
        "rewards": torch.randn(b, t, generator=g),
        "length": torch.tensor([t, t - 2, t][:b]),
        "terminal": torch.tensor([False, True, False][:b]),
        "has_burn_in": torch.tensor([True, False, True][:b]),
        "start_state": net.initial_state(b),
    }


@pytest.mark.parametrize("kind", ["rwkv4", "gru", "mlp"])
def test_burn_in_steps_carry_no_loss(kind):
    """No gradient reaches a burn-in observation; the trained observations get one."""
    arch = ArchConfig(kind=kind, obs_dim=6, n_actions=3, n_bins=5, d=16, n_layers=1, history=3)
    cfg = QLearningConfig(arch=kind, burn_in=4, train_len=6, n_step=2)
    layout = SequenceLayout(cfg.burn_in, cfg.train_len)
    online, target = build_network(arch), build_network(arch)
    torch.nn.init.normal_(online.head.advantage.weight)
    batch = _batch(arch, layout)
    batch["obs"].requires_grad_(True)
    loss, td, valid = sequence_loss(online, target, batch, torch.ones(3), cfg)
    loss.backward()
    grad = batch["obs"].grad.abs().sum(-1)  # [B, slots]
    assert torch.all(grad[:, :cfg.burn_in] == 0)
    assert torch.all(grad[:, cfg.burn_in:cfg.burn_in + 4] > 0)
    assert td.shape == valid.shape == (3, cfg.train_len) and valid.sum() == 6 + 4 + 6


def test_burn_in_rebuilds_the_state_only_where_there_is_one():
    """A sequence without burn-in (an episode's first) starts from its stored state, ignoring slots 0..B-1."""
    arch = ArchConfig(kind="rwkv4", obs_dim=6, n_actions=3, n_bins=5, d=16, n_layers=1)
    cfg = QLearningConfig(burn_in=4, train_len=6)
    layout = SequenceLayout(cfg.burn_in, cfg.train_len)
    online, target = build_network(arch), build_network(arch)
    torch.nn.init.normal_(online.head.advantage.weight)
    for block in online.blocks:
        torch.nn.init.normal_(block.att.output.weight)
    batch = _batch(arch, layout)
    loss_a, td_a, _ = sequence_loss(online, target, batch, torch.ones(3), cfg)
    batch["obs"][:, :cfg.burn_in] += 5.0  # change every burn-in slot
    _, td_b, _ = sequence_loss(online, target, batch, torch.ones(3), cfg)
    assert torch.equal(td_a[1], td_b[1])  # no burn-in: untouched
    assert not torch.equal(td_a[0], td_b[0])  # burned in: the state changed


def _episodes_builder(layout: SequenceLayout, lengths: list[int]):
    """Synthetic episodes whose observation is (episode, step) and state is (episode, step)."""
    builder, out = SequenceBuilder(layout), []
    for e, n in enumerate(lengths):
        builder.start_episode(np.array([e, 0.0]), np.array([e, 0.0]))
        for t in range(n):
            out += builder.add(np.array([t % 3]), float(t), np.array([e, t + 1.0]), np.array([e, t + 1.0]),
                               terminated=t == n - 1 and e % 2 == 0, truncated=t == n - 1 and e % 2 == 1)
    return out


def test_sequences_never_cross_an_episode_end_and_cover_every_step_once():
    layout = SequenceLayout(burn_in=3, train_len=5)
    lengths = [12, 5, 1, 7]
    seqs = _episodes_builder(layout, lengths)
    trained = {}
    for s in seqs:
        used = np.concatenate([s.obs[:layout.burn_in] if s.has_burn_in else np.empty((0, 2)),
                               s.obs[layout.burn_in:layout.burn_in + s.length + 1]])
        assert len(set(used[:, 0].tolist())) == 1, "a sequence holds two episodes"
        episode = int(used[0, 0])
        steps = s.obs[layout.burn_in:layout.burn_in + s.length, 1].astype(int).tolist()
        assert steps == list(range(s.episode_step, s.episode_step + s.length))
        assert s.rewards[:s.length].tolist() == [float(t) for t in steps]
        for t in steps:
            assert (episode, t) not in trained
            trained[(episode, t)] = True
        ends = s.episode_step + s.length == lengths[episode]
        assert s.terminal == (ends and episode % 2 == 0)
        assert np.all(s.obs[layout.burn_in + s.length + 1:] == 0) and np.all(s.rewards[s.length:] == 0)
    assert len(trained) == sum(lengths)


def test_stored_state_is_the_state_the_actor_had_there():
    layout = SequenceLayout(burn_in=3, train_len=5)
    for s in _episodes_builder(layout, [12, 7]):
        slot = 0 if s.has_burn_in else layout.burn_in
        np.testing.assert_array_equal(s.start_state, s.obs[slot])  # synthetic: state == (episode, step)


def test_actor_sequences_replay_to_the_runtimes_states():
    """A real actor (CartPole, RWKV runtime): stepping the runtime over a sequence's burn-in from its
    stored state gives the next sequence's stored state of the same episode."""
    arch = ArchConfig(kind="rwkv4", obs_dim=4, n_actions=1, n_bins=2, d=16, n_layers=1)
    torch.manual_seed(0)
    net = build_network(arch)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    layout = SequenceLayout(burn_in=3, train_len=5)
    spec = ActorSpec("CartPole-v1", arch, {"env_id": "CartPole-v1"}, (0.0, 1.0), 5, layout, seed=0)
    actor = Actor(spec, 0)
    actor.set_weights(weights)
    seqs, episodes = actor.run(300, epsilon=0.3)
    assert episodes and seqs
    runtime = RUNTIMES["rwkv4"](weights, CheckpointMeta(arch, {"env_id": "CartPole-v1"}, [0.0, 1.0], None,
                                                        git_revision=""))
    checked = 0
    for a, b in zip(seqs, seqs[1:]):
        if b.episode_step != a.episode_step + a.length or not b.has_burn_in:
            continue  # b starts a new episode
        state = a.start_state.copy()
        first = 0 if a.has_burn_in else layout.burn_in
        # b's stored state is the state before its slot 0 = step b.episode_step - burn_in.
        for slot in range(first, layout.burn_in + (b.episode_step - layout.burn_in - a.episode_step)):
            _, state = runtime.step(a.obs[slot], state)
        np.testing.assert_allclose(b.start_state, state, rtol=1e-6, atol=1e-6)
        checked += 1
    assert checked >= 5


def test_replay_priorities_and_resume_round_trip(tmp_path):
    layout = SequenceLayout(burn_in=3, train_len=5)
    replay = SequenceReplay(4, layout, obs_dim=2, n_actions=1, state_shape=(2,), seed=0)
    for s in _episodes_builder(layout, [12, 7]):
        replay.add(s)
    assert len(replay) == 4 and replay.added == 5  # 3 + 2 sequences in a ring of 4: the oldest went
    idx, batch, w = replay.sample(3, beta=0.5)
    replay.update_priorities(idx, np.abs(np.random.default_rng(0).normal(size=(3, 5))), batch["length"][:, None] >
                             np.arange(5)[None])
    replay.save(tmp_path / "r.npz", env_steps=1234)
    assert SequenceReplay.stamp(tmp_path / "r.npz") == 1234  # the learner state it belongs with
    other = SequenceReplay(4, layout, obs_dim=2, n_actions=1, state_shape=(2,), seed=1)
    other.load(tmp_path / "r.npz")
    assert np.array_equal(other.priority, replay.priority) and np.array_equal(other.obs, replay.obs)
    np.testing.assert_array_equal(other.sample(5, 0.5)[0], replay.sample(5, 0.5)[0])  # same RNG state too


def test_action_codings_and_unsupported_spaces():
    import gymnasium as gym

    box = action_coding("x", gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-2, 2, (2,)), box_bins=5)
    np.testing.assert_allclose(box.to_env(np.array([0, 4])), [-2.0, 2.0])
    assert action_coding("x", gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4), 5).to_env(np.array([3])) == 3
    with pytest.raises(UnsupportedEnvError, match="not a flat Box"):
        action_coding("x", gym.spaces.Discrete(3), gym.spaces.Discrete(2), 5)
    with pytest.raises(UnsupportedEnvError, match="equal sizes"):
        action_coding("x", gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiDiscrete([2, 3]), 5)
    with pytest.raises(UnsupportedEnvError, match="is not Discrete, MultiDiscrete or a flat Box"):
        action_coding("x", gym.spaces.Box(-1, 1, (3,)), gym.spaces.Tuple([gym.spaces.Discrete(2)]), 5)


def test_config_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        QLearningConfig.from_dict({"learning_rate": 1e-3}, source="x.toml")
    with pytest.raises(ValueError, match="arch"):
        QLearningConfig(arch="lstm")


TINY = dict(env_id="CartPole-v1", initial_greedy_bin=None, total_steps=1200, learning_starts=400, num_envs=1,
            steps_per_round=100, burn_in=2, train_len=4, batch_size=4, eval_every_steps=600, eval_episodes=1,
            checkpoint_every_steps=600, replay_capacity_steps=4000, d=16, n_layers=1)


def test_same_seed_same_run_and_resume_continues(tmp_path):
    a = train(QLearningConfig(**TINY), tmp_path / "a", progress=False)
    b = train(QLearningConfig(**TINY), tmp_path / "b", progress=False)
    wa, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert a.state.updates > 0 and a.state.updates == b.state.updates
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    # Resume: the counters, the replay and the metrics go on from where the first part stopped.
    info = train(QLearningConfig(**{**TINY, "total_steps": 2400}), tmp_path / "a", resume=True, progress=False)
    assert info.state.env_steps == 2400 and info.state.updates > a.state.updates
    rows = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("env_steps") and [r.split(",")[0] for r in rows[1:]] == ["0", "600", "1200", "1800", "2400"]
    _, meta = load_checkpoint(tmp_path / "a" / "last.safetensors")
    assert meta.training["env_steps"] == 2400 and meta.env_id == "CartPole-v1"


def _robotd(*args: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robotd.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_actors_move_the_servos_by_the_trained_contract():
    cfg = QLearningConfig(action_scale_rad=0.15, decision_ticks=2, num_envs=1, stance_rad={"r_knee": 0.2})
    from policies.qlearning import Learner

    learner = Learner(cfg, Path("unused"))
    spec = learner.actor_spec()
    assert learner.robot_spec.action_scale_rad == 0.15 and learner.robot_spec.decision_ticks == 2
    joints = learner.robot_spec.controlled_joints
    assert learner.robot_spec.stance_rad == tuple(0.2 if j == "r_knee" else 0.0 for j in joints)
    assert spec.env_kwargs["config"].obs_spec == learner.robot_spec
    actor = Actor(spec, 0)
    assert actor.env.unwrapped.spec_obs.action_scale_rad == 0.15
    assert actor.env.unwrapped.spec_obs.stance_rad == learner.robot_spec.stance_rad
    with pytest.raises(ValueError, match="robot's envs only"):
        Learner(QLearningConfig(env_id="CartPole-v1", action_scale_rad=0.1), Path("unused"))
    with pytest.raises(ValueError, match="neck_yaw not among the controlled joints"):
        Learner(QLearningConfig(stance_rad={"neck_yaw": 0.1}), Path("unused"))


def test_train_sim_and_eval_end_to_end(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text("learning_starts = 600\nbatch_size = 4\neval_episodes = 1\nsteps_per_round = 100\n"
                      "d = 16\nn_layers = 1\nburn_in = 4\ntrain_len = 8\naction_scale_rad = 0.2\n"
                      "[stance_rad]\nr_hip_roll = -0.1\nl_hip_roll = 0.1\n")
    run = tmp_path / "run"
    out = _robotd("train", "--sim", "--steps", "2000", "--out", str(run), "--config", str(config), "--no-progress")
    assert out.returncode == 0, out.stderr
    for name in ("last.safetensors", "best.safetensors", "metrics.csv", "learning_curve.png", "config.toml",
                 "learner.pt", "replay.npz"):
        assert (run / name).exists(), name
    _, meta = load_checkpoint(run / "best.safetensors")
    assert meta.training["config"]["env_id"] == "robotd/BalanceTaskDiscrete-v0" and "eval_success" in meta.metrics
    assert meta.spec.action_scale_rad == 0.2  # the contract the env moved the servos by, for the daemon
    stance = dict(zip(meta.spec.controlled_joints, meta.spec.stance_rad))
    assert stance["r_hip_roll"] == -0.1 and stance["l_hip_roll"] == 0.1 and stance["r_knee"] == 0.0
    out = _robotd("eval", str(run / "best.safetensors"), "--sim", "--episodes", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 2 and 0.0 <= report["success_rate"] <= 1.0 and len(report["successes"]) == 2
    # The run directory belongs to an rwkv4 network; a second train into it must say so.
    out = _robotd("train", "--resume", str(run), "--arch", "gru", "--steps", "100")
    assert out.returncode == 2 and "belongs to a rwkv4 network" in out.stderr
    out = _robotd("train", "--sim", "--out", str(run), "--steps", "100")
    assert out.returncode == 2 and "already holds a training run" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--env", "NoSuchEnv-v9"], "--env NoSuchEnv-v9"),
    (["--env", "FrozenLake-v1"], "is not a flat Box"),
    (["--sim", "--config", "BAD"], "--config BAD"),
])
def test_train_bad_input_is_a_clear_error(args, message, tmp_path):
    if "BAD" in args:
        bad = tmp_path / "bad.toml"
        bad.write_text("lerning_starts = 5\n")
        args = [str(bad) if a == "BAD" else a for a in args]
        message = "unknown key 'lerning_starts' (did you mean 'learning_starts'?)"
    out = _robotd("train", *args, "--steps", "100", "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_exploration_holds_a_random_bin_for_a_while():
    """epsilon-z-greedy: a joint that starts exploring keeps its random bin 1..explore_max_ticks ticks."""
    arch = ArchConfig(kind="mlp", obs_dim=4, n_actions=1, n_bins=2, d=8, n_layers=1, history=2)
    spec = ActorSpec("CartPole-v1", arch, {"env_id": "CartPole-v1"}, (0.0, 1.0), 5, SequenceLayout(2, 4), seed=0,
                     explore_max_ticks=6)
    actor = Actor(spec, 0)
    n_bins, greedy = 5, np.full(3, 2)
    actor._explore_bin, actor._explore_left = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    durations = []
    for _ in range(300):
        first = actor._explore(greedy.copy(), 1.0, n_bins)  # every idle joint starts exploring now
        chosen, duration = actor._explore_bin.copy(), actor._explore_left + 1
        np.testing.assert_array_equal(first, chosen)
        for tick in range(1, int(duration.max()) + 1):
            bins = actor._explore(greedy.copy(), 0.0, n_bins)  # no new starts: held bins, then greedy
            np.testing.assert_array_equal(bins, np.where(tick < duration, chosen, greedy))
        durations += duration.tolist()
    assert min(durations) == 1 and max(durations) == 6 and 3.0 < np.mean(durations) < 4.0


def test_decision_hold_decides_on_the_first_tick_and_every_kth_after():
    from sim.observation import DecisionHold

    hold, due = DecisionHold(3), []
    for tick in range(8):
        if tick == 5:
            hold.reset()
        due.append(hold.due)
        hold.advance()
    assert due == [True, False, False, True, False, True, False, False]
    with pytest.raises(ValueError):
        DecisionHold(0)


def test_the_policy_and_the_actor_both_decide_by_the_decision_hold(monkeypatch):
    """CheckpointPolicy and the actors keep no decision rule of their own: a DecisionHold that
    is due on every tick makes both decide on every tick, whatever decision_ticks says."""
    from dataclasses import replace

    from policies.runtime import CheckpointPolicy
    from sim.observation import DecisionHold, ObservationSpec

    monkeypatch.setattr(DecisionHold, "due", property(lambda self: True))
    spec = replace(ObservationSpec(), decision_ticks=3)
    arch = ArchConfig(kind="gru", obs_dim=spec.size, n_actions=spec.n_actions, n_bins=spec.n_bins, d=8, n_layers=1)
    weights = {k: v.detach().numpy() for k, v in build_network(arch).state_dict().items()}
    meta = CheckpointMeta.create(arch, spec, None, git_revision="")

    def counted_runtime(calls: list[int]):
        runtime = RUNTIMES["gru"](weights, meta)
        step = runtime.step
        runtime.step = lambda obs, state, out_state=None: (calls.append(1), step(obs, state, out_state))[1]
        return runtime

    policy_calls: list[int] = []
    policy = CheckpointPolicy(counted_runtime(policy_calls), spec)
    for _ in range(4):
        policy.act(np.zeros(spec.size, dtype=np.float32))
    assert len(policy_calls) == 4
    actor = Actor(ActorSpec("robotd/BalanceTaskDiscrete-v0", arch, spec.to_dict(), tuple(spec.bin_levels()), 5,
                            SequenceLayout(burn_in=2, train_len=4), seed=0, decision_ticks=3), 0)
    actor.set_weights(weights)
    actor_calls: list[int] = []
    actor.runtime = counted_runtime(actor_calls)
    actor.run(4, epsilon=0.0)
    assert len(actor_calls) == actor._steps == 4


def test_decision_ticks_hold_the_action_in_the_policy_and_the_actor():
    """decision_ticks = 3: the checkpoint policy steps its network on calls 0, 3, 6 after a reset;
    an actor's sequence step is one decision of 3 env ticks with their rewards summed."""
    from dataclasses import replace

    from policies.runtime import CheckpointPolicy
    from sim.observation import ObservationSpec

    spec = replace(ObservationSpec(), decision_ticks=3)
    arch = ArchConfig(kind="gru", obs_dim=spec.size, n_actions=spec.n_actions, n_bins=spec.n_bins, d=8, n_layers=1)
    net = build_network(arch)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    meta = CheckpointMeta.create(arch, spec, None, git_revision="")
    runtime = RUNTIMES["gru"]({k: v.detach().numpy() for k, v in net.state_dict().items()}, meta)
    calls = []
    step = runtime.step
    runtime.step = lambda obs, state, out_state=None: (calls.append(1), step(obs, state, out_state))[1]
    policy = CheckpointPolicy(runtime, spec)
    rng = np.random.default_rng(0)
    actions = []
    for i in range(8):
        if i == 5:
            policy.reset()
        actions.append(policy.act(rng.normal(size=spec.size).astype(np.float32)).copy())
        assert len(calls) == [1, 1, 1, 2, 2, 3, 3, 3][i]
    assert np.array_equal(actions[0], actions[2]) and np.array_equal(actions[3], actions[4])

    layout = SequenceLayout(burn_in=2, train_len=4)
    actor_spec = ActorSpec("robotd/BalanceTaskDiscrete-v0", arch, spec.to_dict(), tuple(spec.bin_levels()), 5,
                           layout, seed=0, decision_ticks=3)
    actor = Actor(actor_spec, 0)
    actor.set_weights({k: v.detach().numpy() for k, v in net.state_dict().items()})
    seqs, _ = actor.run(3 * 9, epsilon=0.0)  # 9 decisions: two full sequences of 4
    assert [s.length for s in seqs] == [4, 4] and actor._steps == 27
    # A decision's reward is the sum of its 3 ticks': replay the same episode with the same bins.
    from policies.actors import make_env

    env = make_env("robotd/BalanceTaskDiscrete-v0")
    env.reset(seed=0)  # the actor's first episode: seed * 1000 + index
    for bins, reward in zip(seqs[0].actions, seqs[0].rewards):
        ticks = [env.step(bins.astype(np.int64))[1] for _ in range(3)]
        assert reward == pytest.approx(sum(ticks), rel=1e-6)


@pytest.mark.parametrize("env_id", ["robotd/BalanceTaskDiscrete-v0", "CartPole-v1"])
def test_resolved_config_round_trips_through_toml(env_id, tmp_path):
    """Every field survives config.toml, None included (TOML has none: it is written "none")."""
    import tomllib

    from policies.qlearning import write_config_toml

    defaults = QLearningConfig.from_dict({**QLearningConfig.env_defaults(env_id), "env_id": env_id})
    every_field_set = QLearningConfig(env_id=env_id, minutes=3.5, action_scale_rad=0.1, initial_greedy_bin=1,
                                      stance_rad={"r_knee": 0.2}, action_history=None)
    for cfg in (defaults, every_field_set):
        write_config_toml(cfg, tmp_path / "config.toml")
        assert QLearningConfig.from_dict(tomllib.loads((tmp_path / "config.toml").read_text())) == cfg
    assert QLearningConfig.env_defaults("CartPole-v1")["initial_greedy_bin"] == "none"
    assert defaults.initial_greedy_bin is (None if env_id == "CartPole-v1" else 2)


def test_env_defaults_are_printed_and_config_overrides_them(tmp_path):
    """`robotd train --env CartPole-v1` takes the shipped per-env defaults; --config wins over them."""
    import argparse

    from robotd.commands.train import resolve_config

    config = tmp_path / "c.toml"
    config.write_text("lr = 5e-4\n")
    args = argparse.Namespace(resume=None, config=config, calibration=None, sim=False, env="CartPole-v1",
                              out=tmp_path / "r", steps=None, minutes=None, seed=None, arch=None, num_envs=None,
                              device=None)
    cfg, _, _ = resolve_config(args)
    assert cfg.lr == 5e-4 and cfg.n_step == 3 and cfg.epsilon_start == 1.0 and cfg.initial_greedy_bin is None


def test_the_positive_control_env_has_no_delays_and_fixed_pushes():
    import gymnasium as gym

    import sim.envs  # noqa: F401
    from sim.envs import BOX_TWIN

    env = gym.make("robotd/UndelayedPushDiscrete-v0").unwrapped
    cfg = env.config
    assert cfg.randomization.actuator_delay_ms == (0.0, 0.0) and cfg.phone.latency_ms == (0.0, 0.0)
    assert cfg.pushes.force_n == (7.5, 7.5)
    assert BOX_TWIN["robotd/UndelayedPushDiscrete-v0"] == "robotd/UndelayedPush-v0"
    env.close()


def _interrupted_run(run: Path, env_steps: int, elapsed_s: float, **config) -> Path:
    """A run directory as an interrupted ``robotd train`` leaves it, as far as --resume reads it."""
    import dataclasses

    from policies.qlearning import TrainState, write_config_toml

    run.mkdir()
    write_config_toml(QLearningConfig(**{**TINY, **config}), run / "config.toml")
    torch.save({"state": dataclasses.asdict(TrainState(env_steps=env_steps, elapsed_s=elapsed_s))}, run / "learner.pt")
    return run


def test_resume_budget_flags_mean_more_and_a_spent_budget_is_refused(tmp_path):
    from robotd.commands.train import _parser, resolve_config

    run = _interrupted_run(tmp_path / "run", env_steps=1200, elapsed_s=300.0)  # TINY's 1200 steps: all spent
    cfg, _, resume = resolve_config(_parser().parse_args(["--resume", str(run), "--steps", "500"]))
    assert resume and cfg.total_steps == 1700 and cfg.minutes is None
    cfg, _, _ = resolve_config(_parser().parse_args(["--resume", str(run), "--minutes", "30"]))
    assert cfg.minutes == pytest.approx(35.0) and cfg.total_steps == 0
    with pytest.raises(ValueError, match=r"has had its whole budget \(1200 steps; it ran 1200 steps in 5.0 min\); "
                                         r"give --steps N or --minutes N"):
        resolve_config(_parser().parse_args(["--resume", str(run)]))
    timed = _interrupted_run(tmp_path / "timed", env_steps=600, elapsed_s=600.0, total_steps=0, minutes=20.0)
    cfg, _, _ = resolve_config(_parser().parse_args(["--resume", str(timed)]))  # 10 of its 20 min left
    assert cfg.minutes == 20.0


@pytest.mark.parametrize("flag", [["--minutes", "0"], ["--minutes", "-1"], ["--steps", "0"]])
def test_an_empty_budget_is_an_error(flag, capsys):
    from robotd.commands.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--sim", *flag])
    assert exit_.value.code == 2 and f"{flag[0]}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("toml, message", [
    ('lr = "fast"\n', "lr must be a number, got 'fast'"),
    ("prioritized = 1\n", "prioritized must be true or false, got 1"),
    ("[stance_rad]\nr_knee = \"deep\"\n",
     "stance_rad must be a table of name = number or \"none\", got {'r_knee': 'deep'}"),
    ('initial_greedy_bin = "two"\n', 'initial_greedy_bin must be an integer or "none", got \'two\''),
    ("learnin_rate = 0.001\n", "unknown key 'learnin_rate' (did you mean 'lr'?)"),
    ("learning_rate = 0.001\n", "unknown key 'learning_rate' (did you mean 'lr'?)"),
])
def test_a_config_value_of_the_wrong_type_or_an_alias_is_named_before_the_run_directory_is_made(
        tmp_path, capsys, toml, message):
    from robotd.commands.train import main

    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert main(["--sim", "--config", str(config), "--steps", "100", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"robotd train: {config}: {message}\n"
    assert not (tmp_path / "run").exists()
