"""Measured latency: the whole U-Net forward, and each unit alone on its captured inputs.

Method (SnapFusion "do profiling"): run the U-Net once with forward pre-hooks that keep
every unit's positional and keyword inputs, then call each unit alone on exactly those
inputs, in rounds together with the whole forward (`time_rounds`): `warmup` untimed rounds,
then `repeats` timed ones; report medians. Everything runs under `torch.inference_mode()`;
on CUDA each call is bracketed by a synchronisation.

Timing a unit alone measures its kernels and its Python dispatch; the glue between units
(skip concatenation, time embedding, conv_in/conv_out, block bookkeeping) is what remains
of the whole forward: `other = whole - sum(units)`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from slimdiff.unet import added_cond_inputs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# clock name -> seconds. "wall": elapsed time (the latency). "cpu": CPU time of this process;
# with one thread on a CPU it is the wall time the call would take on an idle machine, as it
# leaves out the time the process waits while other jobs hold the core (what it shares with
# them, caches and memory bandwidth, still shows). For shared machines.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class UNetInputs:
    """One seeded U-Net input: sample (B, C_in, h, w), timestep (B,), text (B, L, D)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None  # SDXL: pooled text (B, P), time ids (B, 6)

    def __call__(self, model: nn.Module):
        return model(self.sample, self.timestep, encoder_hidden_states=self.encoder_hidden_states,
                     added_cond_kwargs=self.added_cond_kwargs, return_dict=False)


def make_unet_inputs(
    model: nn.Module,
    latent_size: int,
    text_width: int,
    batch: int = 1,
    context_length: int = 77,
    timestep: int = 500,  # mid-schedule of T = 1000; latency does not depend on it
    seed: int = 0,
) -> UNetInputs:
    """Seeded random inputs on the model's device and dtype; text is (B, context_length, text_width);
    an SDXL U-Net also gets seeded added conditioning (`slimdiff.unet.added_cond_inputs`)."""
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, model.config.in_channels, latent_size, latent_size, generator=g)
    ehs = torch.randn(batch, context_length, text_width, generator=g)
    t = torch.full((batch,), timestep, dtype=torch.long)
    added = added_cond_inputs(model, batch, g)  # SDXL's added conditioning (None otherwise)
    if added is not None:
        added = {k: v.to(p.device, p.dtype) for k, v in added.items()}
    return UNetInputs(sample.to(p.device, p.dtype), t.to(p.device), ehs.to(p.device, p.dtype), added)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_call(
    fn: Callable[[], object], warmup: int, repeats: int, device: torch.device, clock: str = "wall"
) -> list[float]:
    """Call `fn` `warmup` times untimed, then `repeats` times; return each timed call in ms."""
    return time_rounds({"fn": fn}, warmup, repeats, device, clock=clock)["fn"]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@contextlib.contextmanager
def capture_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[tuple, dict]]]:
    """Record each named module's (args, kwargs) of its first call during the `with` body.

    The tensors are kept by reference (a U-Net's units do not modify their inputs in place).
    """
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = []

    def make_hook(name):
        def hook(module, args, kwargs):
            captured.setdefault(name, (args, dict(kwargs)))

        return hook

    for name, mod in modules.items():
        handles.append(mod.register_forward_pre_hook(make_hook(name), with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def unit_calls(modules: dict[str, nn.Module], captured: dict[str, tuple[tuple, dict]]) -> dict[str, Callable[[], object]]:
    """name -> a call of that module alone on its captured inputs."""
    missing = [n for n in modules if n not in captured]
    if missing:
        raise ValueError(f"units never ran in the capture forward, cannot time them: {missing}")
    return {name: (lambda m=mod, a=captured[name]: m(*a[0], **a[1])) for name, mod in modules.items()}


def time_rounds(
    calls: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Time every call once per round, `warmup` untimed rounds then `repeats` timed ones.

    Round-robin rather than one call's repeats after another: the whole forward and the units
    then see the same machine load, so `whole - sum(units)` is not skewed by load that
    changed between two measuring phases (this machine is shared). -> {name: [ms per round]}
    `clock`: a key of CLOCKS.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if clock not in CLOCKS:
        raise ValueError(f"clock {clock!r} is not one of {list(CLOCKS)}")
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for name, fn in calls.items():
                _sync(device)
                t0 = now()
                fn()
                _sync(device)
                if r >= warmup:
                    times[name].append((now() - t0) * 1e3)
            if progress is not None:
                progress(f"round {r + 1}/{warmup + repeats}")
    return times


def model_latencies(
    models: dict[str, nn.Module],
    latent_size: int,
    text_width: int,
    batch: int = 1,
    context_length: int = 77,
    warmup: int = 1,
    repeats: int = 5,
    clock: str = "wall",
    threads: int | None = None,
) -> dict[str, float]:
    """Median ms of one whole U-Net forward per model, all timed round-robin (`time_rounds`)
    so that every model sees the same machine load: the way to compare candidates' latency.
    Inputs: seeded (batch, C, latent, latent) latents and (batch, context_length, text_width) text."""
    if not models:
        raise ValueError("model_latencies needs at least one model")
    inputs = {n: make_unet_inputs(m, latent_size, text_width, batch, context_length) for n, m in models.items()}
    calls = {n: (lambda m=m, x=inputs[n]: x(m)) for n, m in models.items()}
    device = next(iter(inputs.values())).sample.device
    with num_threads(threads):
        times = time_rounds(calls, warmup, repeats, device, clock=clock)
    return {n: median(t) for n, t in times.items()}


def time_model(model: nn.Module, inputs: UNetInputs, warmup: int, repeats: int, clock: str = "wall") -> list[float]:
    """Whole U-Net forward times in ms."""
    return time_call(lambda: inputs(model), warmup, repeats, inputs.sample.device, clock)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op threads for the body (None keeps the current number)."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


class progress_bar:
    """A rich progress bar on stderr (or nothing); yields `advance(description)`."""

    # used as: with progress_bar(enabled, total_steps) as advance: ...; advance("step done")

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("timing", total=self.total)
        return lambda what: self._bar.update(task, advance=1, description=f"timing: {what}")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
