"""robusttune.analysis: reads experiment directories and builds tables, Pareto fronts and reports.

Installed as ``robusttune.analysis`` (the folder sits at the top of the repository by design); import it
as ``from robusttune.analysis import results, report``. It never imports torch, ray or optuna, so it runs on
a laptop that only has pandas and the plotting libraries. ``pareto`` (fronts, hypervolume) is the package's
shared maths, ``robusttune.pareto``, re-exported here.
"""

from robusttune import pareto

__all__ = ["pareto"]
