"""FSDP2 (torch's `fully_shard`, through accelerate with `fsdp_version: 2`): what the loop does differently.

    accelerate launch --config_file examples/accelerate_fsdp2.yaml -m slimdiff distill ...

- The set-up: accelerate 1.16 selects `DistributedType.FSDP` only for accelerator devices (its
  `AcceleratorState` sets it inside the MULTI_GPU / ... / MULTI_NEURON branch), so CPU processes
  launched with an FSDP config would silently run plain DDP. torch's FSDP2 runs on CPU processes
  too (gloo has the all-gather and reduce-scatter it needs), so for such a launch
  `enable_fsdp2_on_cpu` sets the state accelerate sets on GPUs (FSDP version 2 only): the model is
  then sharded by accelerate's own `fsdp2_prepare_model`, as on GPUs.
- The parameters become DTensors sharded on dim 0 across the processes; the optimiser state and
  the EMA (`slimdiff.train.ema`, built from the sharded parameters) are sharded alike. A consistency
  model's target network (`slimdiff.distill.lcm`) is sharded as the student (`shard_like`), its EMA
  kept in place on its shards; DMD2's fake score (`slimdiff.distill.onestep`) is sharded on the same
  mesh (`shard_module`) with its own optimiser (its GAN head is refused: the head reads a hooked
  mid-block feature, a path FSDP2's backward does not gather the fake score's weights for); a progressive stage's teacher is the
  gathered `full_state_dict`. Frozen teachers (the real score) are not sharded: each process holds one.
- Checkpoints: each process writes its own shard, `shard-<rank>-of-<world>.{json,safetensors}`
  (its slice of every parameter, buffer, optimiser state, averaged tensor and other sharded part), with `checkpoint.save_state`:
  nothing is pickled (accelerate's sharded save is torch.distributed.checkpoint, whose `.metadata`
  is read back with `pickle.load`). A sharded checkpoint resumes with the same number of processes.
- The result: the full weights gathered (`get_model_state_dict(full_state_dict=True)`) into a plain
  copy of the model taken before sharding (`meta_copy`: no memory until then), on every process.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimdiff.train.checkpoint import load_state, save_state


def is_fsdp2(accelerator) -> bool:
    """Whether `accelerator` shards the model with FSDP2."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return accelerator.distributed_type.value == "FSDP" and getattr(plugin, "fsdp_version", 1) == 2


def enable_fsdp2_on_cpu(accelerator) -> None:
    """Give CPU processes launched with an FSDP config the FSDP state accelerate gives GPU ones."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or \
            accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # read from the launch's FSDP_* environment
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_version {plugin.fsdp_version} on CPU processes: slimdiff shards CPU runs with FSDP2 "
                         f"only (valid: fsdp_version: 2 in the accelerate config)")
    from accelerate.state import PartialState

    # both shared states: an AcceleratorState built later copies PartialState's over its own
    PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def local(value: Any) -> Any:
    """`value` with every DTensor replaced by this process's shard (a plain tensor)."""
    if hasattr(value, "to_local"):
        return value.to_local()
    if isinstance(value, dict):
        return {k: local(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [local(v) for v in value]
    return value


def all_finite(tensors: list[torch.Tensor], accelerator) -> bool:
    """No NaN / inf in any tensor (sharded ones: in any process's shard; every process agrees)."""
    ok = all(bool(torch.isfinite(local(t).detach()).all()) for t in tensors)
    if not is_fsdp2(accelerator):
        return ok
    bad = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), reduction="sum")
    return bad.item() == 0


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device (structure only), without the hooks training added."""
    plain = copy.deepcopy(model).to("meta")
    for m in plain.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return plain


def gathered(model: nn.Module, plain: nn.Module) -> nn.Module:
    """`plain` (a `meta_copy` of `model` before sharding) holding `model`'s full weights; every
    process takes part and gets them."""
    full = full_state_dict(model)
    device = next(iter(full.values())).device
    plain = plain.to_empty(device=device)
    plain.load_state_dict(full)
    with torch.no_grad():
        for name, buf in model.named_buffers():  # non-persistent buffers are in no state dict
            plain.get_buffer(name).copy_(buf)
    return plain


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank}-of-{world}"


def save(directory: Path, accelerator, model: nn.Module, optimizer, emas: dict[str, Any],
         parts: dict[str, tuple[nn.Module, Any]] | None = None) -> None:
    """This process's shard of the model, the optimiser state, each EMA of `emas` (name -> EMA or
    None; the trainer's "ema", a consistency model's "target") and each other sharded module with its
    own optimiser of `parts` (name -> (module, optimiser); DMD2's "fake" score); every process calls it."""
    state = {"model": {k: local(v) for k, v in model.state_dict().items()},
             "optimizer": local(optimizer.state_dict()),
             **{name: {**ema.state_dict(), "shadow": local(ema.shadow)} if ema is not None else None
                for name, ema in emas.items()},
             **{name: {"model": {k: local(v) for k, v in m.state_dict().items()}, "optimizer": local(o.state_dict())}
                for name, (m, o) in (parts or {}).items()}}
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_state(directory, shard_name(accelerator.process_index, accelerator.num_processes), state)


def load(directory: Path, accelerator, model: nn.Module, optimizer, emas: dict[str, Any],
         parts: dict[str, tuple[nn.Module, Any]] | None = None) -> None:
    """Put this process's shard back (the checkpoint must have been written by as many processes)."""
    name = shard_name(accelerator.process_index, accelerator.num_processes)
    if not (Path(directory) / f"{name}.json").is_file():
        found = sorted(p.stem for p in Path(directory).glob("shard-*.json")) or ["no FSDP2 shards"]
        raise ValueError(f"--resume {directory}: holds {', '.join(found)}; an FSDP2 checkpoint resumes with the "
                         f"number of processes that wrote it (valid: that many processes)")
    state = load_state(directory, name)
    with torch.no_grad():
        _put(state, model, optimizer)
        for key, (module, opt) in (parts or {}).items():
            if state.get(key) is None:
                raise ValueError(f"--resume {directory}: {name}.json holds no {key!r} state (valid: a checkpoint "
                                 f"of the same method)")
            _put(state[key], module, opt)
        for key, ema in emas.items():
            if ema is None:
                continue
            saved = state.get(key)
            if saved is None:
                raise ValueError(f"--resume {directory}: {name}.json holds no {key!r} state (was the run's "
                                 f"EMA / target network setting changed?)")
            ema.decay, ema.num_updates = saved["decay"], saved["num_updates"]
            for s, t in zip(ema.shadow, saved["shadow"], strict=True):
                local(s).copy_(t)


def _put(state: dict, model: nn.Module, optimizer) -> None:
    """This process's slices of `model`'s parameters and buffers and of `optimizer`'s state, from `state`."""
    for key, value in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items():
        local(value).copy_(state["model"][key])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt = state["optimizer"]
    opt["state"] = {int(i): {k: _like(v, params[int(i)]) for k, v in s.items()} for i, s in opt["state"].items()}
    optimizer.load_state_dict(opt)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of an FSDP2 `model`; every process takes part and gets it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def shard_like(module: nn.Module, reference: nn.Module) -> nn.Module:
    """Shard `module` (a plain copy of the FSDP2 model `reference`, same structure) as `reference` is:
    each submodule `reference` holds as an FSDP unit becomes one of `module`'s, on the same mesh, so
    their parameters are DTensors placed alike (e.g. a target network whose parameters an EMA of the
    student's sharded parameters updates in place). Frozen: used under no_grad, every process calls it."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = [n for n, m in reference.named_modules() if isinstance(m, FSDPModule)]
    mesh = next(p for p in reference.parameters() if hasattr(p, "device_mesh")).device_mesh
    for n in sorted(names, key=lambda n: -n.count(".") if n else 1):  # the innermost first, the root last
        fully_shard(module.get_submodule(n), mesh=mesh, reshard_after_forward=True)
    for (n, p), q in zip(module.named_parameters(), reference.parameters(), strict=True):
        if getattr(p, "placements", None) != getattr(q, "placements", None) or p.shape != q.shape:
            raise ValueError(f"shard_like: {n} is placed {getattr(p, 'placements', None)}, its reference "
                             f"{getattr(q, 'placements', None)}")
    return module


def shard_module(module: nn.Module, reference: nn.Module) -> nn.Module:
    """Shard `module` (any structure; trained with its own optimiser, e.g. DMD2's fake score) on the mesh of
    the FSDP2 model `reference` as accelerate's TRANSFORMER_BASED_WRAP shards a model: each submodule whose
    class is in `module._no_split_modules` (a diffusers model's blocks) is an FSDP unit, then the root.
    Its parameters become DTensors (build its optimiser afterwards); FSDP averages its gradients."""
    from torch.distributed.fsdp import fully_shard

    mesh = next(p for p in reference.parameters() if hasattr(p, "device_mesh")).device_mesh
    classes = set(getattr(module, "_no_split_modules", None) or [])
    for m in reversed(list(module.modules())[1:]):  # reversed pre-order: every child before its parent
        if type(m).__name__ in classes:
            fully_shard(m, mesh=mesh, reshard_after_forward=True)
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module


def _like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """An optimiser state tensor sharded like its parameter (scalars such as `step` stay plain)."""
    if not hasattr(param, "to_local") or value.dim() == 0:
        return value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(value.to(param.device), param.device_mesh, param.placements, shape=param.shape,
                              stride=param.stride())
