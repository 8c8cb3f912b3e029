"""Exponential moving average of the student's trainable weights.

    shadow <- d * shadow + (1 - d) * param,   d = min(decay, (1 + n) / (10 + n))

after the n-th optimiser step; the warm-up of d is diffusers' `EMAModel` default, so early
steps are not dominated by the initial weights (`warmup=False`: d = decay throughout, the plain
EMA). Saved in checkpoints (`state_dict`). The project's one EMA: use it rather than
diffusers' `EMAModel` or a hand-written update.
"""

from __future__ import annotations

from typing import Iterable

import torch


class EMA:
    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} is not in (0, 1)")
        self.decay = decay
        self.warmup = warmup  # d = min(decay, (1 + n) / (10 + n)) (diffusers' default); False: d = decay
        self.shadow = [p.detach().clone().float() for p in parameters]
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.num_updates += 1
        d = self.current_decay()
        for s, p in zip(self.shadow, parameters, strict=True):
            s.lerp_(p.detach().float(), 1.0 - d)  # s + (1 - d) (p - s)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, parameters, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, the student has {len(self.shadow)} "
                             f"trainable tensors (was --freeze changed?)")
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = [s.to(t.device) for s, t in zip(state["shadow"], self.shadow)]
