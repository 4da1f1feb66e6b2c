"""The subcommands behind ``robotd`` (:mod:`robotd.cli` parses the line and dispatches): each
module is one command's argument parsing and ``main(argv)``, or a helper only commands use.

``doctor``, ``replay`` (with :mod:`.rerun`), ``rollout``, ``train``, ``eval`` (:mod:`.evaluate`)
and ``tune`` (with :mod:`.robot_tuning`, its on-robot loop) are commands; :mod:`.simrun` puts
the daemon beside a simulated robot for ``--port sim``; :mod:`.extras` names the extra a
missing module belongs to. ``robotd run`` itself and the option types every command shares
stay in :mod:`robotd.cli`, the entry point (``robotd`` and ``python -m robotd.cli``).

May import anything of robotd, ``policies``, ``sim`` and ``calibration``, and the extras (torch,
MuJoCo, gymnasium, optuna, matplotlib, foxglove), but only inside the command that needs them,
so ``robotd --help`` and ``robotd run`` stay light. Nothing below imports a command: the
daemon (:mod:`robotd.daemon`), the log (:mod:`robotd.logs`), the phone and the board do not.
"""
