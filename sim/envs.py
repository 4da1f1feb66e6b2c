"""Registers the biped envs with gymnasium: ``import sim.envs`` then ``gymnasium.make(...)``.

- ``robotd/BipedBalance-v0``: continuous Box action in [-1, 1]^n_actions.
- ``robotd/BipedBalanceDiscrete-v0``: MultiDiscrete([n_bins] * n_actions).
- ``robotd/BalanceTask-v0`` / ``robotd/BalanceTaskDiscrete-v0``: the same envs configured as the
  balance task (:mod:`sim.balance_task`: string let out onto the feet, pushes at 4/6/8 s); the
  final step's ``info["task"]`` holds the episode's score, ``success`` included.
- ``robotd/UndelayedPush-v0`` / ``robotd/UndelayedPushDiscrete-v0``: the learner's positive
  control (:func:`sim.env.undelayed_push_config`: no dead time, no phone latency, 7.5 N pushes).
- ``robotd/StayUpTask-v0`` / ``robotd/StayUpTaskDiscrete-v0``: the stay-up task
  (:func:`sim.env.stay_up_task_config`: lowered as in the balance task, then pushed every 2-4 s
  with up to 12 N for 26 s); ``info["task"]`` adds its standing fraction, knock-downs, get-ups
  and falls (:class:`sim.balance_task.StayUpScore`).

Both take ``config=EnvConfig(...)``, ``calibration=...`` and ``render_mode="rgb_array"``.
Episode length is the env's own truncation (``EnvConfig.episode_s``), not a TimeLimit wrapper.
"""

from gymnasium.envs.registration import register, registry

from sim.balance_task import TASK_ENV_IDS

#: A discrete id -> the Box id of the same env: the learner's evals run the policy as robotd eval does.
BOX_TWIN = {"robotd/BipedBalanceDiscrete-v0": "robotd/BipedBalance-v0",
            **{discrete: box for box, discrete in TASK_ENV_IDS.values()}}
#: id -> (entry point, kwargs)
ENV_IDS = {
    "robotd/BipedBalance-v0": ("sim.env:BipedBalanceEnv", {}),
    "robotd/BipedBalanceDiscrete-v0": ("sim.env:BipedBalanceDiscreteEnv", {}),
    **{box: ("sim.env:make_balance_task", {"task": task}) for task, (box, _) in TASK_ENV_IDS.items()},
    **{discrete: ("sim.env:make_balance_task", {"task": task, "discrete": True})
       for task, (_, discrete) in TASK_ENV_IDS.items()},
}

for _env_id, (_entry_point, _kwargs) in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, kwargs=_kwargs)
