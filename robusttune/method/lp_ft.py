"""``lp_ft``: LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution"): first a linear probe, then full fine-tuning from the probed head.

Both stages run in one run of ``steps`` steps: steps ``< lp_fraction * steps`` train the head alone (the tower's
weights get no gradient, so AdamW leaves them and their moments untouched), the rest every weight, with the one
optimizer and schedule of the run. The official code trains the probe apart (logistic regression on frozen
features) before a fresh fine-tuning run; one run with a searched share keeps the budget of every method equal and
resumes like any run (the stage is a function of the step). The head starts as the zero-shot head either way.
"""

from __future__ import annotations

from robusttune.method.step import ALL, HEAD, MethodStep


def probe_steps(lp_fraction: float, total: int) -> int:
    """The steps of the linear-probing stage: the first ``round(lp_fraction * total)``."""
    return int(round(lp_fraction * total))


class LpFt(MethodStep):
    def trains(self, step: int, total: int) -> str:
        return HEAD if step < probe_steps(self.knobs.lp_fraction, total) else ALL
