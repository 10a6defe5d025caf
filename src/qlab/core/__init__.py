"""The library: envs and their exact models, the oracle, exploration, agents, replay and
the training driver. Imports only numpy, torch, numba and gymnasium."""
