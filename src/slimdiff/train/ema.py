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
    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float, warmup: bool = True,
                 into: Iterable[torch.Tensor] | None = None):
        """`into`: float32 tensors to hold the shadow in place (e.g. a target network's parameters, which
        then follow the average without a second copy); they start as copies of `parameters`."""
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} is not in (0, 1)")
        self.decay = decay
        self.warmup = warmup  # d = min(decay, (1 + n) / (10 + n)) (diffusers' default); False: d = decay
        parameters = list(parameters)
        if into is None:
            self.shadow = [p.detach().clone().float() for p in parameters]
        else:
            self.shadow = [s.requires_grad_(False) for s in into]
            if len(self.shadow) != len(parameters) or any(s.dtype != torch.float32 or s.shape != p.shape
                                                          for s, p in zip(self.shadow, parameters)):
                raise ValueError("EMA `into` must hold one float32 tensor of each parameter's shape")
            with torch.no_grad():
                for s, p in zip(self.shadow, parameters):
                    s.copy_(p.detach())
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
        with torch.no_grad():  # in place: a shadow held by a target network stays its parameters
            for s, saved in zip(self.shadow, state["shadow"]):
                s.copy_(saved.to(s.device))
