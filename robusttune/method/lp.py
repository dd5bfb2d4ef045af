"""``lp``: linear probing. Cross-entropy trains the head (initialised as the zero-shot head) and nothing else; the
image tower stays the pre-trained one. (WiSE-FT's linear-classifier variant; the optimiser holds the head alone.)"""

from __future__ import annotations

from robusttune.method.step import HEAD, MethodStep


class Lp(MethodStep):
    def parameters(self):
        return list(self.student.head.parameters())

    def trains(self, step: int, total: int) -> str:
        return HEAD

    @property
    def ever_trains_tower(self) -> bool:
        return False
