"""Hydra integration: the sweep callback, fused sweeps, preflight checks."""
