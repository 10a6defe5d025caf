"""``python -m qlab``: the same as ``qlab-train``."""

from qlab.cli import main

main()
