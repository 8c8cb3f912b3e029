"""Latency lookup table: predict a candidate U-Net's latency without running it.

    lut = LatencyLUT.build(teacher, ProfileSettings(resolution=512))   # measures once
    lut.save("lut.json")
    ms = LatencyLUT.load("lut.json").predict(student)                  # no forward pass

Model (SnapFusion's latency lookup table, METHODS.md section 1):
    latency(net) ~ sum over units u of LUT[signature(u)] + LUT[stem signature(net)]
Unit entries are medians of the unit timed alone on the inputs it receives inside the
network (slimdiff.profile.latency). The stem entry ("overhead") is what the whole forward
takes beyond its units: conv_in, time embedding, conv_norm_out/conv_out and the glue between
units (skip concatenation, dispatch), measured as `whole - sum(units)` on the network the
table was built from. The glue part scales a little with the number of units; a candidate
with fewer units is therefore predicted slightly slow (see docs/bench/presets_latency.md).

`predict` only reads module sizes (no forward, no allocation); a unit whose signature is not
in the table raises `LUTMissError` naming it; `extend(model)` measures the missing ones.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import torch
from torch import nn

from slimdiff.io import read_json, write_json
from slimdiff.unet import text_width

from .latency import capture_inputs, make_unet_inputs, median, num_threads, progress_bar, time_rounds, unit_calls
from .profiler import WHOLE, ProfileResult, ProfileSettings, check_latent_size, check_model_placement, signatures
from .signature import device_label, unit_signature
from .units import list_units, transformer_parts

FORMAT = "slimdiff-latency-lut/1"


class LUTMissError(ValueError):
    """A unit (or the stem) of the candidate has no entry in the table."""


class LatencyLUT:
    def __init__(self, settings: ProfileSettings):
        if settings.threads is None:
            raise ValueError("a LatencyLUT needs settings.threads resolved to a number (latency depends on it)")
        self.settings = settings  # the run the entries were measured with (latent, batch, dtype, ...)
        self.units: dict[str, float] = {}  # unit signature key -> median ms
        self.overhead: dict[str, float] = {}  # stem signature key -> ms (whole - sum of units)
        # Transformer parts: inner block ("tblock") and shell ("tshell": the unit minus its blocks)
        # signature key -> ms, so a unit of any depth is predicted as shell + its blocks
        self.inner: dict[str, float] = {}
        self.meta: dict[str, dict] = {}  # key -> {"signature": {...}, "source": unit name, "samples_ms": [...]}

    def __len__(self) -> int:
        return len(self.units)

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, model: nn.Module, settings: ProfileSettings | None = None, progress: bool = False) -> "LatencyLUT":
        """Measure every distinct unit signature of `model` once, and its stem overhead."""
        settings = settings or ProfileSettings()
        with num_threads(settings.threads) as threads:
            lut = cls(replace(settings, threads=threads))
            lut._measure(model, overhead=True, progress=progress)
        return lut

    def extend(self, model: nn.Module, progress: bool = False) -> list[str]:
        """Measure the units of `model` missing from the table (and its stem if missing).
        Returns the new keys. Runs `model` once plus the timings, with the table's settings."""
        with num_threads(self.settings.threads):
            return self._measure(model, overhead=False, progress=progress)

    @classmethod
    def from_profile(cls, result: ProfileResult) -> "LatencyLUT":
        """A table from a profile's unit latencies (units sharing a signature: median)."""
        if result.total.latency_ms is None:
            raise ValueError("the profile has no latency (it ran with measure_latency=False)")
        names = {f.name for f in fields(ProfileSettings)}
        lut = cls(ProfileSettings(**{k: v for k, v in result.settings.items() if k in names}))
        groups: dict[str, list] = {}
        for r in result.units:
            groups.setdefault(r.signature, []).append(r)
        for key, rows in groups.items():
            lut.units[key] = median([r.latency_ms for r in rows])
            lut.meta[key] = {"source": rows[0].name, "unit_medians_ms": [r.latency_ms for r in rows]}
        # stem overhead = whole - sum of the table's entries, so predict(profiled model) == whole
        whole = result.total.latency_ms
        lut.overhead[result.overhead_signature] = whole - sum(lut.units[r.signature] for r in result.units)
        lut.meta[result.overhead_signature] = {"source": result.model}
        return lut

    def _parts(self, model: nn.Module, units: list) -> dict[str, tuple[str, list[str], list]]:
        """Transformer unit name -> (shell key, inner block keys, inner ProfiledUnits)."""
        common = dict(context_length=self.settings.context_length, cross_attention_dim=text_width(model),
                      dtype=self.settings.dtype, device=device_label(self.settings.device),
                      batch=self.settings.batch, threads=self.settings.threads)
        out = {}
        for u in units:
            parts = transformer_parts(u)
            if parts is not None:
                shell, blocks = parts
                out[u.name] = (unit_signature(shell, self.settings.latent, **common).key(),
                               [unit_signature(b, self.settings.latent, **common).key() for b in blocks], blocks)
        return out

    def _measure(self, model: nn.Module, overhead: bool, progress: bool) -> list[str]:
        """A numbered-step orchestration: 1. what is missing, 2. time it (the whole forward,
        units and inner blocks in rounds), 3. the entries, 4. the stem overhead."""
        s = self.settings
        check_model_placement(model, s)
        model.eval()
        units = list_units(model)
        check_latent_size(units, s.latent)
        sigs, stem = signatures(model, units, s, s.threads)
        parts = self._parts(model, units)
        # 1. one representative unit per signature not yet in the table; a Transformer unit of depth
        # > 1 whose shell is missing is timed with its inner blocks (shell = unit - blocks)
        todo, todo_inner = {}, {}
        for u, sig in zip(units, sigs):
            key = sig.key()
            shell_missing = u.name in parts and len(parts[u.name][2]) > 1 and parts[u.name][0] not in self.inner
            if shell_missing and parts[u.name][0] not in {p for p, _ in todo_inner.values()}:
                todo_inner[u.name] = (parts[u.name][0], parts[u.name][2])
            elif key in self.units or key in {k for k, _ in todo.values()}:
                continue
            if u.name in todo_inner or self._predict_unit(u.name, key, parts) is None:
                todo[u.name] = (key, sig)
        need_stem = overhead or stem.key() not in self.overhead
        if not todo and not need_stem:
            return []
        # 2. capture each module's inputs in one forward, then time them alone, in rounds
        inputs = make_unet_inputs(model, s.latent, text_width(model), s.batch, s.context_length, seed=s.seed)
        modules = {u.name: u.module for u in units if u.name in todo}
        modules |= {b.name: b.module for _, blocks in todo_inner.values() for b in blocks}
        with capture_inputs(modules) as captured, torch.inference_mode():
            inputs(model)
        # the whole forward runs in every round, extending or not, so a unit is timed with the cache
        # state of a running network (timed alone back to back, a small unit reads 2x faster)
        calls = {WHOLE: lambda: inputs(model)} | unit_calls(modules, captured)
        with progress_bar(progress, s.warmup + s.repeats) as advance:
            times = time_rounds(calls, s.warmup, s.repeats, inputs.sample.device, advance, s.clock)
        del captured, calls
        # 3. entries: units, then each timed Transformer's blocks and shell
        new = []
        for name, (key, sig) in todo.items():
            if key not in self.units:
                self.units[key] = median(times[name])
                self.meta[key] = {"signature": sig.to_dict(), "source": name, "samples_ms": times[name]}
                new.append(key)
        by_key: dict[str, list[float]] = {}  # inner block key -> its timed blocks' medians (all of them)
        for name, (_, blocks) in todo_inner.items():
            for b, key in zip(blocks, parts[name][1]):
                by_key.setdefault(key, []).append(median(times[b.name]))
        for key, values in by_key.items():
            if key not in self.inner:
                self.inner[key] = median(values)
                self.meta[key] = {"block_medians_ms": values}
                new.append(key)
        for name, (shell_key, blocks) in todo_inner.items():
            block_ms = [median(times[b.name]) for b in blocks]
            self.inner[shell_key] = median(times[name]) - sum(block_ms)
            self.meta[shell_key] = {"source": f"{name} minus its inner blocks"}
            new += [shell_key]
        # 4. stem overhead = whole forward - sum of this model's unit predictions
        if need_stem:
            whole = times[WHOLE]
            self.overhead[stem.key()] = median(whole) - sum(self._predict_unit(u.name, g.key(), parts)
                                                            for u, g in zip(units, sigs))
            self.meta[stem.key()] = {"signature": stem.to_dict(), "whole_ms": whole}
            new.append(stem.key())
        return new

    def _predict_unit(self, name: str, key: str, parts: dict) -> float | None:
        """A unit's ms: its own entry; else (a Transformer unit) shell + its inner blocks; else None."""
        if key in self.units:
            return self.units[key]
        if name in parts:
            shell, blocks, _ = parts[name]
            if shell in self.inner and all(b in self.inner for b in blocks):
                return self.inner[shell] + sum(self.inner[b] for b in blocks)
        return None

    # ---------------------------------------------------------------- prediction
    def explain(self, model: nn.Module, inner: bool = False) -> list[tuple[str, str, float]]:
        """(unit name, signature key, ms) per unit, then ("other", stem key, overhead ms).
        No forward pass; raises LUTMissError naming every unit whose signature is missing.
        A Transformer unit without its own entry is predicted as its shell plus its inner blocks.
        `inner=True` appends (not part of the sum) each inner block of a unit of depth > 1
        (`<unit>.tblock.k`, the candidates of SDXL pruning) with its own entry."""
        units = list_units(model)
        sigs, stem = signatures(model, units, self.settings, self.settings.threads)
        parts = self._parts(model, units)
        ms = {u.name: self._predict_unit(u.name, g.key(), parts) for u, g in zip(units, sigs)}
        missing = [f"{u.name}: {g.key()}" for u, g in zip(units, sigs) if ms[u.name] is None]
        extra = []
        if inner:
            for name, (_, keys, blocks) in parts.items():
                if len(blocks) > 1:
                    missing += [f"{b.name}: {k}" for b, k in zip(blocks, keys) if k not in self.inner]
                    extra += [(b.name, k, self.inner.get(k)) for b, k in zip(blocks, keys)]
        if stem.key() not in self.overhead:
            missing.append(f"stem overhead: {stem.key()}")
        if missing:
            raise LUTMissError(
                f"{len(missing)} signature(s) not in the latency table ({len(self)} unit entries):\n  "
                + "\n  ".join(missing)
                + "\nmeasure them with LatencyLUT.extend(model), or build the table on this model"
            )
        out = [(u.name, g.key(), ms[u.name]) for u, g in zip(units, sigs)]
        return out + [("other", stem.key(), self.overhead[stem.key()])] + extra

    def breakdown(self, model: nn.Module, inner: bool = False) -> dict[str, float]:
        """Predicted ms per unit name, plus "other" (the stem overhead). No forward pass.
        `inner=True` adds the inner blocks of deep Transformer units (inside their unit's ms)."""
        return {name: ms for name, _, ms in self.explain(model, inner=inner)}

    def predict(self, model: nn.Module) -> float:
        """Predicted whole-U-Net latency in ms (sum of unit entries + stem overhead)."""
        return sum(self.breakdown(model).values())

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "settings": asdict(self.settings),
            "units": [{"key": k, "ms": v, **self.meta.get(k, {})} for k, v in self.units.items()],
            "overhead": [{"key": k, "ms": v, **self.meta.get(k, {})} for k, v in self.overhead.items()],
            "inner": [{"key": k, "ms": v, **self.meta.get(k, {})} for k, v in self.inner.items()],
        }

    def save(self, path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "LatencyLUT":
        d = read_json(path)
        if d.get("format") != FORMAT:
            raise ValueError(f"{path} is not a latency table (format {d.get('format')!r}, expected {FORMAT!r})")
        lut = cls(ProfileSettings(**d["settings"]))
        for section, table in (("units", lut.units), ("overhead", lut.overhead), ("inner", lut.inner)):
            for e in d.get(section, []):
                table[e["key"]] = float(e["ms"])
                lut.meta[e["key"]] = {k: v for k, v in e.items() if k not in ("key", "ms")}
        return lut
