"""Reading sweeps back from MLflow and comparing them: ``runs`` (MLflow -> tidy pandas
frames), ``stats`` (aggregates over seeds with bootstrap CIs, probability of improvement,
episodes to solve), ``plots`` (curves, interval plots, value heatmaps) and ``report``
(``qlab-report``: all of it as one HTML page)."""

from qlab.analysis.runs import AnalysisError, Sweep, load_sweep

__all__ = ["AnalysisError", "Sweep", "load_sweep"]
