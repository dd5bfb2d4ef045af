"""``ft``: vanilla fine-tuning, cross-entropy on the clean images with every weight trained (the WiSE-FT paper's
"standard fine-tuning" end-to-end baseline; wise-ft's src/models/finetune.py)."""

from __future__ import annotations

from robusttune.method.step import MethodStep


class Ft(MethodStep):
    pass
