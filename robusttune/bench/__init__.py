"""The tabular search benchmark: ``table`` (every grid point's learning curve in one Parquet file), ``tabulate``
(training the grid through the ordinary sweep path) and ``replay`` (searches replayed against a table through
Ray Tune + Optuna + the scheduler, injected into the sweep as a ``ReplayRunner``)."""
