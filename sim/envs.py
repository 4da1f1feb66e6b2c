"""Registers the biped envs with gymnasium: ``import sim.envs`` then ``gymnasium.make(...)``.

- ``robotd/BipedBalance-v0``: continuous Box action in [-1, 1]^n_actions.
- ``robotd/BipedBalanceDiscrete-v0``: MultiDiscrete([n_bins] * n_actions).
- ``robotd/BalanceTask-v0`` / ``robotd/BalanceTaskDiscrete-v0``: the same envs configured as the
  balance task (:mod:`sim.balance_task`: string let out onto the feet, pushes at 4/6/8 s); the
  final step's ``info["task"]`` holds the episode's score, ``success`` included.

Both take ``config=EnvConfig(...)``, ``calibration=...`` and ``render_mode="rgb_array"``.
Episode length is the env's own truncation (``EnvConfig.episode_s``), not a TimeLimit wrapper.
"""

from gymnasium.envs.registration import register, registry

from sim.balance_task import BALANCE_TASK_DISCRETE_ENV_ID, BALANCE_TASK_ENV_ID

#: id -> (entry point, kwargs)
ENV_IDS = {
    "robotd/BipedBalance-v0": ("sim.env:BipedBalanceEnv", {}),
    "robotd/BipedBalanceDiscrete-v0": ("sim.env:BipedBalanceDiscreteEnv", {}),
    BALANCE_TASK_ENV_ID: ("sim.env:make_balance_task", {}),
    BALANCE_TASK_DISCRETE_ENV_ID: ("sim.env:make_balance_task", {"discrete": True}),
}

for _env_id, (_entry_point, _kwargs) in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, kwargs=_kwargs)
