"""MuJoCo model of the robot, gymnasium env, servo/phone models, simulated phone and board.

This package's ``__init__`` imports nothing heavy: the daemon imports
``sim.observation`` on its hot path and must not pull in MuJoCo for it.
"""
