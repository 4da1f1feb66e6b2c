"""Policies: RWKV network, torch-free step runtime, checkpoints, Q-learning, Bayesian tuning.

Importing this package imports nothing heavy: the daemon uses ``policies.runtime`` and
``policies.baselines`` without torch.
"""
