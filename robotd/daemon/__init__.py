"""The daemon: what runs on the robot in every tick of ``robotd run``, and its assembly.

:mod:`.run` checks every file and starts a run (``prepare_run``, ``run_daemon``) and wires the
rest together; :mod:`.loop` keeps the fixed-rate tick schedule; each tick :mod:`.safety`
decides the mode and is the only path to a servo, and :mod:`.policy_tick` calls the policy that
:mod:`.policy_select` chose at start-up. Beside it, in the same process, run the phone's
receiver and fusion (:mod:`robotd.phone`), the serial link (:mod:`robotd.board`) and the log
writer (:mod:`robotd.logs`).

May import: numpy, ``calibration``, ``sim``'s numpy-only contract (``sim.observation``,
``sim.servo_command``), ``policies``' torch-free runtime (``policies.baselines``,
``policies.runtime``, ``policies.checkpoint``), and :mod:`robotd.phone`, :mod:`robotd.board` and
:mod:`robotd.logs`. Never torch, MuJoCo, gymnasium or optuna (start-up time and memory on the
robot's computer, whose base install has none of them), and nothing from :mod:`robotd.commands`
or :mod:`robotd.cli`: the commands start the daemon, not the other way round.
``tests/test_hot_path_imports.py`` checks both.
"""
