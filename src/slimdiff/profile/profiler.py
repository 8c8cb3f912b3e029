"""Profile a U-Net: parameters, FLOPs and measured latency per unit and per block.

    from slimdiff.profile import ProfileSettings, profile_unet
    result = profile_unet(unet, ProfileSettings(resolution=512, repeats=3))
    result.save_json("profile.json"); print(result.blocks[0])

Shares are fractions of the whole model: units (or blocks) plus the "other" row sum to 1.
"other" = whole minus the units: conv_in, time embedding, conv_norm_out/conv_out and, for
latency, the glue between units (skip concatenation, Python dispatch).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimdiff.io import read_json, write_json
from slimdiff.unet import num_params, text_width

from .flops import UnitFlopCounter
from .latency import CLOCKS, DTYPES, capture_inputs, make_unet_inputs, median, num_threads, progress_bar, time_rounds, unit_calls
from .signature import device_label, stem_signature, unit_signature
from .units import ProfiledUnit, block_order, list_units, num_levels

WHOLE = "__whole__"  # key of the whole-U-Net forward among the timed calls


@dataclass
class ProfileSettings:
    resolution: int = 512  # image side in pixels
    latent_size: int | None = None  # latent side; None -> resolution // vae_scale_factor
    vae_scale_factor: int = 8  # SD's VAE downsamples 8x (2**(len(vae.block_out_channels)-1))
    batch: int = 1  # images per forward (classifier-free guidance runs 2)
    dtype: str = "float32"  # one of DTYPES; the safe default
    device: str = "cpu"  # "meta" counts params and FLOPs of SD-scale models in a second, no weights needed
    threads: int | None = None  # torch intra-op threads; None keeps torch.get_num_threads()
    warmup: int = 1  # untimed rounds before timing (a round calls the whole forward and each unit once)
    repeats: int = 3  # timed rounds; medians are reported
    context_length: int = 77  # text tokens (CLIP tokenizer max length)
    clock: str = "wall"  # "wall" (latency) | "cpu" (process CPU time: 1 thread on a CPU, for shared machines)
    measure_latency: bool = True  # False: parameters and FLOPs only (one forward)
    seed: int = 0  # inputs are seeded random tensors

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported; valid: {list(DTYPES)}")
        for name in ("resolution", "vae_scale_factor", "batch", "repeats", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.latent_size is None and self.resolution % self.vae_scale_factor:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of vae_scale_factor {self.vae_scale_factor}; "
                "pick another resolution or give latent_size"
            )
        if self.clock not in CLOCKS:
            raise ValueError(f"clock {self.clock!r} is not one of {list(CLOCKS)}")
        if self.clock == "cpu" and (self.threads != 1 or torch.device(self.device).type != "cpu"):
            raise ValueError(
                f"clock 'cpu' measures process CPU time, which is a latency only with threads=1 on a CPU; "
                f"got threads={self.threads}, device={self.device!r}"
            )
        if self.latent_size is not None and self.latent_size < 1:
            raise ValueError(f"latent_size must be >= 1, got {self.latent_size}")
        if torch.device(self.device).type == "meta" and self.measure_latency:  # also rejects unknown devices
            raise ValueError("device 'meta' has shapes but no data: it counts parameters and FLOPs only; "
                             "set measure_latency=False (CLI: --no-latency)")

    @property
    def latent(self) -> int:
        """Latent side length the U-Net sees."""
        return self.latent_size if self.latent_size is not None else self.resolution // self.vae_scale_factor


@dataclass
class Row:
    """One line of a profile: a unit, a block, "other" or "total"."""

    name: str
    params: int
    flops: int  # 2 * MACs (see slimdiff.profile.flops)
    latency_ms: float | None  # median; None when latency was not measured
    params_share: float = 0.0
    flops_share: float = 0.0
    latency_share: float | None = None
    kind: str | None = None  # units: resnet | attn | downsample | upsample
    block: str | None = None  # units: their block
    in_channels: int | None = None
    out_channels: int | None = None
    spatial: int | None = None  # units: input side length (latent tokens)
    signature: str | None = None  # units: LatencyLUT key
    latency_samples_ms: list[float] = field(default_factory=list)


@dataclass
class ProfileResult:
    model: str
    settings: dict  # ProfileSettings plus the resolved values (latent, threads, device name)
    units: list[Row]
    blocks: list[Row]
    other: Row
    total: Row
    overhead_signature: str | None = None  # LatencyLUT key of "other"
    kinds: list[Row] = field(default_factory=list)  # per unit kind (resnet, attn, ...): sums over units
    inner: list[Row] = field(default_factory=list)  # inner blocks of Transformer units of depth > 1 (inside
    #                                                  their unit's row: not in any sum)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileResult":
        rows = lambda xs: [Row(**x) for x in xs]  # noqa: E731
        return cls(
            model=d["model"],
            settings=d["settings"],
            units=rows(d["units"]),
            blocks=rows(d["blocks"]),
            other=Row(**d["other"]),
            total=Row(**d["total"]),
            overhead_signature=d.get("overhead_signature"),
            kinds=rows(d.get("kinds", [])),
            inner=rows(d.get("inner", [])),
        )


def check_model_placement(model: nn.Module, settings: ProfileSettings) -> None:
    """Raise unless the model already sits on settings.device in settings.dtype."""
    p = next(model.parameters())
    want_dev, want_dtype = torch.device(settings.device), DTYPES[settings.dtype]
    if p.device.type != want_dev.type or p.dtype != want_dtype:
        raise ValueError(
            f"model is on {p.device} in {p.dtype}, settings ask for {settings.device} in {settings.dtype}; "
            f"call model.to({settings.device!r}, torch.{settings.dtype}) first"
        )


def place(model: nn.Module, device: str, dtype: str) -> nn.Module:
    """Move `model` to `device` and cast it to `dtype` (only what differs; in place)."""
    p = next(model.parameters())
    if p.device != torch.device(device):
        model = model.to(device)
    if p.dtype != DTYPES[dtype]:
        model = model.to(dtype=DTYPES[dtype])
    return model


def check_latent_size(units: list[ProfiledUnit], latent: int) -> None:
    factor = 2 ** (num_levels(units) - 1)
    if latent % factor:
        raise ValueError(
            f"latent size {latent} is not a multiple of {factor} (the U-Net halves it "
            f"{num_levels(units) - 1} times); pick another resolution or latent size"
        )


def signatures(model: nn.Module, units: list[ProfiledUnit], settings: ProfileSettings, threads: int):
    """(unit signatures in unit order, stem signature) for a run with these settings."""
    common = dict(
        context_length=settings.context_length,
        cross_attention_dim=text_width(model),
        dtype=settings.dtype,
        device=device_label(settings.device),
        batch=settings.batch,
        threads=threads,
    )
    return [unit_signature(u, settings.latent, **common) for u in units], stem_signature(model, settings.latent, **common)


def profile_unet(
    model: nn.Module, settings: ProfileSettings | None = None, name: str = "model", progress: bool = False
) -> ProfileResult:
    """Parameters, FLOPs and (optionally) measured latency per unit, per block and in total; the
    inner blocks of Transformer units of depth > 1 (SDXL) get rows of their own (`inner`).
    A numbered-step orchestration (1. one forward: FLOPs and inputs, 2. latency, 3. rows)."""
    settings = settings or ProfileSettings()
    check_model_placement(model, settings)
    model.eval()
    units = list_units(model)
    check_latent_size(units, settings.latent)
    inner = [u for u in list_units(model, inner=True) if u.kind == "tblock"]
    modules = {u.name: u.module for u in units + inner}
    s = settings
    inputs = make_unet_inputs(model, s.latent, text_width(model), s.batch, s.context_length, seed=s.seed)

    with num_threads(settings.threads) as threads:
        # 1. one forward: FLOPs per unit (counter) and each unit's inputs (pre-hooks)
        with capture_inputs(modules) as captured, UnitFlopCounter(modules) as fc, torch.inference_mode():
            inputs(model)
        for u in units:  # the level rule (used by LatencyLUT.predict) must match reality
            h, w = captured[u.name][0][0].shape[-2:]
            if (h, w) != (settings.latent >> u.level,) * 2:
                raise RuntimeError(f"unit {u.name} saw a {h}x{w} input, its level {u.level} implies {settings.latent >> u.level}")

        # 2. latency: the whole forward and each unit alone on its captured inputs, in rounds
        unit_ms: dict[str, list[float]] = {}
        whole_ms: list[float] = []
        if settings.measure_latency:
            calls = {WHOLE: lambda: inputs(model)} | unit_calls(modules, captured)
            with progress_bar(progress, settings.warmup + settings.repeats) as advance:
                unit_ms = time_rounds(calls, s.warmup, s.repeats, inputs.sample.device, advance, s.clock)
            whole_ms = unit_ms.pop(WHOLE)
            del calls
        del captured

    # 3. rows: units, blocks, other, total
    unit_sigs, stem_sig = signatures(model, units + inner, settings, threads)
    total_params = num_params(model)
    total_lat = median(whole_ms) if whole_ms else None
    rows = []
    for u, sig in zip(units + inner, unit_sigs):
        rows.append(
            Row(
                name=u.name,
                kind=u.kind,
                block=u.block,
                in_channels=u.in_channels,
                out_channels=u.out_channels,
                spatial=settings.latent >> u.level,
                params=u.params,
                flops=fc.by_name.get(u.name, 0),
                latency_ms=median(unit_ms[u.name]) if unit_ms else None,
                latency_samples_ms=unit_ms.get(u.name, []),
                signature=sig.key(),
            )
        )
    rows, inner_rows = rows[: len(units)], rows[len(units):]
    blocks = [_sum_rows(b, [r for r in rows if r.block == b]) for b in block_order(units)]
    kinds = [_sum_rows(k, [r for r in rows if r.kind == k]) for k in dict.fromkeys(r.kind for r in rows)]
    total = Row(name="total", params=total_params, flops=fc.total, latency_ms=total_lat, latency_samples_ms=whole_ms)
    other = Row(
        name="other",
        params=total_params - sum(r.params for r in rows),
        flops=fc.total - sum(r.flops for r in rows),
        latency_ms=total_lat - sum(r.latency_ms for r in rows) if unit_ms else None,
    )
    for r in rows + blocks + kinds + inner_rows + [other, total]:
        r.params_share = r.params / total_params
        r.flops_share = r.flops / fc.total if fc.total else 0.0
        r.latency_share = r.latency_ms / total_lat if total_lat else None

    resolved = asdict(settings) | {
        "latent_size": settings.latent,
        "latent_from": "resolution" if settings.latent_size is None else "latent_size",
        "threads": threads,
        "device_name": device_label(settings.device),
        "flops_unit": "FLOPs = 2 x MACs of convs, linears and matmuls (attention QK^T and AV included)",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    return ProfileResult(name, resolved, rows, blocks, other, total, stem_sig.key() if unit_ms else None, kinds,
                         inner_rows)


def _sum_rows(name: str, members: list[Row]) -> Row:
    """A block or kind row: sums over its unit rows (latency None when not measured)."""
    measured = all(r.latency_ms is not None for r in members)
    return Row(
        name=name,
        params=sum(r.params for r in members),
        flops=sum(r.flops for r in members),
        latency_ms=sum(r.latency_ms for r in members) if measured else None,
    )


def vae_scale_factor_of(directory: str | os.PathLike | None) -> int | None:
    """The VAE's downsampling factor of a pipeline directory (2**(len(vae.block_out_channels)-1)),
    or None when `directory` has no VAE (None, a UNet directory). Names (`toy`, built-ins) are
    resolved by the caller."""
    config = Path(directory) / "vae" / "config.json" if directory is not None else None
    if config is None or not config.is_file():
        return None
    return 2 ** (len(read_json(config)["block_out_channels"]) - 1)
