"""qlab's fused sweeper for Hydra (``hydra/sweeper=fused``); see :mod:`qlab.sweeps.fused`."""
