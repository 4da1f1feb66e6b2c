"""Registers the biped envs with gymnasium: ``import sim.envs`` then ``gymnasium.make(...)``.

- ``robotd/BipedBalance-v0``: continuous Box action in [-1, 1]^n_actions.
- ``robotd/BipedBalanceDiscrete-v0``: MultiDiscrete([n_bins] * n_actions).

Both take ``config=EnvConfig(...)``, ``calibration=...`` and ``render_mode="rgb_array"``.
Episode length is the env's own truncation (``EnvConfig.episode_s``), not a TimeLimit wrapper.
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = {
    "robotd/BipedBalance-v0": "sim.env:BipedBalanceEnv",
    "robotd/BipedBalanceDiscrete-v0": "sim.env:BipedBalanceDiscreteEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point)
