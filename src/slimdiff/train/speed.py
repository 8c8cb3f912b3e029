"""Training-speed pieces of the loop: the per-phase profile and the speed options.

    timer = PhaseTimer(enabled=True, cuda=False)
    with timer("teacher forward"):
        ...
    timer.end_step(); summary = timer.summary()    # median ms per phase over the profiled steps

The options (`DistillConfig` fields, applied by `slimdiff.distill.kd`; which are exact is said per option):
  - `teacher_inference_mode` (exact): the teacher runs under `torch.inference_mode`, keeping no
    autograd state; its outputs are then cloned once (a loss may save them for backward, which
    inference tensors may not be), the same values.
  - `teacher_dtype` "bf16"/"fp16" (changes numerics): the teacher forward under autocast; its
    outputs are cast back to float32 for the losses, the student trains as before.
  - `compile` (changes numerics at rounding level; first steps pay the compile time):
    `torch.compile` of the student and the teacher (`compile_backend`, default inductor, which
    needs a C compiler on the CPU: checked before the run, a one-line error when missing).
  - `channels_last` (float32, rounding-level differences): 4-D weights and the U-Net inputs in
    channels-last memory format (oneDNN/cuDNN pick NHWC kernels); weights are saved contiguous.
  - `adamw` "loop" | "foreach" | "fused": torch's AdamW implementations (same update rule;
    foreach/fused batch the per-parameter kernels, rounding-level differences).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from slimdiff.io import atomic_write, write_json

# the phases of one optimiser step, in order (the profile's rows)
PHASES = ("data", "text encoder", "vae encode", "teacher forward", "student forward", "losses+hooks",
          "backward", "optimizer", "logging+syncs")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # --mixed-precision -> dtype
TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAMW_IMPLS = ("loop", "foreach", "fused")


class PhaseTimer:
    """Wall time per named phase of a step; a no-op unless `enabled`. On CUDA, synchronises the
    device before and after each phase only when enabled (profiling), so kernels are charged to
    the phase that launched them."""

    def __init__(self, enabled: bool = False, cuda: bool = False):
        self.enabled, self.cuda = enabled, cuda
        self.current: dict[str, float] = {}  # phase -> seconds in the step being timed
        self.steps: list[dict[str, float]] = []  # one dict per finished step

    def __call__(self, phase: str):
        return self._time(phase) if self.enabled else contextlib.nullcontext()

    @contextlib.contextmanager
    def _time(self, phase: str):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - t0

    def end_step(self) -> None:
        """Close the step being timed (its phases become one row of `steps`)."""
        if self.enabled and self.current:
            self.steps.append(self.current)
        self.current = {}

    def summary(self) -> dict:
        """{"steps": n, "phases": {phase: median ms}, "total_ms": median of the per-step sums}."""
        names = [p for p in PHASES if any(p in s for s in self.steps)]
        names += sorted({p for s in self.steps for p in s} - set(names))
        phases = {p: 1000 * statistics.median(s.get(p, 0.0) for s in self.steps) for p in names}
        totals = [1000 * sum(s.values()) for s in self.steps]
        return {"steps": len(self.steps), "phases": phases,
                "total_ms": statistics.median(totals) if totals else float("nan")}


def write_profile(summary: dict, out: Path, about: str) -> tuple[Path, Path]:
    """out/profile.json and out/profile.md: median ms per phase, its share, the largest phase."""
    phases, total = summary["phases"], summary["total_ms"]
    largest = max(phases, key=phases.get) if phases else None
    write_json(out / "profile.json", {**summary, "largest_phase": largest, "about": about})
    lines = [f"# Distillation step profile ({about})", "",
             f"Medians over {summary['steps']} profiled steps (the run's first step is excluded as warm-up).", "",
             "| phase | ms | share |", "|---|---:|---:|"]
    lines += [f"| {p} | {ms:.1f} | {ms / total:.0%} |" for p, ms in phases.items()]
    lines += [f"| **step** | **{total:.1f}** | |", "", f"Largest phase: **{largest}**.", ""]
    atomic_write(out / "profile.md", "\n".join(lines))
    return out / "profile.json", out / "profile.md"


def check_compile_backend(backend: str, device: torch.device) -> None:
    """Raise one line when `torch.compile(backend=...)` cannot run here (unknown backend, or
    inductor on the CPU without a C++ compiler)."""
    import torch._dynamo

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ValueError(f"--compile backend {backend!r} is not available; torch offers "
                         f"{sorted(torch._dynamo.list_backends())}")
    if backend == "inductor" and device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise ValueError("--compile with the inductor backend needs a C++ compiler on the CPU (g++/clang++ not on "
                         "PATH); install one, pass --compile-backend aot_eager, or drop --compile")


def check_teacher_dtype(name: str, device: torch.device) -> None:
    """bf16/fp16 autocast must exist on the device (fp16 on CPU and bf16 on old GPUs do not)."""
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--teacher-dtype bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise ValueError("--teacher-dtype fp16 is not supported on the CPU (no float16 autocast kernels); "
                         "use bf16 or fp32")


@contextlib.contextmanager
def teacher_context(device: torch.device, inference: bool, dtype_name: str):
    """The teacher forward's context: inference mode (else no_grad), autocast when `dtype_name` asks."""
    dtype = TEACHER_DTYPES[dtype_name]
    with (torch.inference_mode() if inference else torch.no_grad()):
        if dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=dtype):
                yield


def to_normal_float(x: torch.Tensor, inference: bool) -> torch.Tensor:
    """A teacher output as a float32 tensor autograd may save (a clone when it is an inference tensor)."""
    x = x.float()
    return x.clone() if inference and x.is_inference() else x


def set_channels_last(module: nn.Module, on: bool) -> None:
    """4-D weights to channels-last (`on`) or back to the contiguous format, in place."""
    module.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def as_channels_last(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if on and x.ndim == 4 else x


def adamw(params: list, impl: str, **kwargs) -> torch.optim.AdamW:
    """torch AdamW in the implementation `impl` ("loop": for-loop, "foreach", "fused": one kernel
    for all parameters, on the CPU and CUDA; where torch has no fused kernel for the parameters'
    device or dtype it falls back to foreach and says so)."""
    flags = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[impl]
    try:
        return torch.optim.AdamW(params, **kwargs, **flags)
    except RuntimeError as e:
        if impl != "fused":
            raise
        warnings.warn(f"fused AdamW is not available here ({str(e).splitlines()[0]}); using foreach AdamW")
        return torch.optim.AdamW(params, **kwargs, foreach=True)


def compile_model(model: nn.Module, backend: str) -> nn.Module:
    """`model.compile(backend=...)`: compiled in place (the same module object: hooks, names and
    saving unchanged); the first call of each input shape pays the compile time."""
    model.compile(backend=backend)
    return model


def about_run(device: torch.device) -> str:
    return f"{device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def peak_memory() -> dict:
    """The process's peak memory so far: resident set (CPU, MB) and, on CUDA, the allocator's peak (MB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)
    found = {"peak_rss_mb": round(rss, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        found["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return found
