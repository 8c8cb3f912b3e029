"""Atomic, resumable checkpoints on top of `accelerate`'s `save_state` / `load_state`.

    out/checkpoints/checkpoint-<step>/
        model.safetensors        student weights (unwrapped names: loads with 1 or N processes)
        optimizer.bin            AdamW state (trainable parameters only)
        custom_checkpoint_0.pkl  LR schedule; custom_checkpoint_1.pkl: EMA (when on)
        random_states_<rank>.pkl RNG states of each process
        train_state.json         step, global batch, processes and the DistillConfig

Written into `.tmp-checkpoint-<step>` and renamed when complete, so a directory named
`checkpoint-<step>` is always whole; a kill mid-save leaves only a temp dir, removed next save.
The data position needs no state of its own: batches, noise, timesteps and dropped units are
pure functions of (seed, step) (see trainer), so the step is the data position.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file

from slimdiff.io import read_json, write_json

PREFIX = "checkpoint-"
_DDP_PREFIX = "module."


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of the complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(rf"{PREFIX}(\d+)", p.name)
        if m and p.is_dir() and (p / "train_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(resume: str | None, out: str | Path) -> Path | None:
    """The checkpoint dir to resume from: `latest` (None when the run has none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(Path(out) / "checkpoints")
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "train_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume!r}: not a checkpoint directory (no train_state.json); "
                                f"use 'latest' or an {Path(out) / 'checkpoints' / (PREFIX + 'N')} directory")
    return path


def resume_point(cfg, out: Path, world: int) -> tuple[Path | None, int]:
    """(checkpoint dir or None, start step) of a run with settings `cfg` (its `resume`,
    `batch_size`, `max_steps` and `resume_mismatches(saved_config)`) and `world` processes.

    Refuses to start over a run's checkpoints without `resume`, and a checkpoint whose settings
    or global batch differ (ValueError naming each difference)."""
    resume_dir = resolve_resume(cfg.resume, out)
    if cfg.resume is None and list_checkpoints(out / "checkpoints"):
        raise ValueError(f"{out} holds checkpoints of an earlier run; continue it with --resume latest, "
                         f"or choose another --out (or delete {out / 'checkpoints'})")
    if resume_dir is None:
        return None, 0
    state = read_train_state(resume_dir)
    problems = cfg.resume_mismatches(state["config"])
    if state["micro_batch_global"] != cfg.batch_size * world:
        problems.append(f"global batch: checkpoint {state['micro_batch_global']}, now "
                        f"{cfg.batch_size} x {world} processes = {cfg.batch_size * world}")
    if problems:
        raise ValueError(f"--resume {resume_dir}: the run's settings differ from the checkpoint's: "
                         + "; ".join(problems))
    if state["step"] > cfg.max_steps:
        raise ValueError(f"--resume {resume_dir}: checkpoint is at step {state['step']}, "
                         f"beyond max_steps {cfg.max_steps}")
    return resume_dir, state["step"]


def read_train_state(path: Path) -> dict:
    return read_json(path / "train_state.json")


def _strip(state: dict) -> dict:
    return {k[len(_DDP_PREFIX):] if k.startswith(_DDP_PREFIX) else k: v for k, v in state.items()}


def install_portable_model_hooks(accelerator) -> None:
    """Save and load model weights under their unwrapped names, so a checkpoint written by N
    processes (DDP adds `module.`) resumes in 1 and vice versa. Not for FSDP/DeepSpeed, whose
    sharded states accelerate handles itself."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return

    def save_hook(models, weights, output_dir):
        for i in range(len(weights)):
            weights[i] = _strip(weights[i])

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            state = _strip(load_file(os.path.join(input_dir, name)))
            accelerator.unwrap_model(model).load_state_dict(state, strict=True)
        models.clear()  # loaded here; accelerate skips them

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def maybe_save(accelerator, root: str | Path, cfg, step: int, world: int) -> Path | None:
    """After optimiser step `step`: a checkpoint every `cfg.checkpoint_every` steps (0: never),
    none at the last step (the run's output follows), with the run's config and global batch."""
    if not cfg.checkpoint_every or step % cfg.checkpoint_every or step >= cfg.max_steps:
        return None
    state = {"step": step, "micro_batch_global": cfg.batch_size * world, "num_processes": world,
             "config": cfg.to_dict()}
    return save_checkpoint(accelerator, root, step, state, cfg.checkpoints_keep)


def save_checkpoint(accelerator, root: str | Path, step: int, train_state: dict, keep: int) -> Path | None:
    """Every process calls this; returns the final dir on the main process."""
    root = Path(root)
    tmp, final = root / f".tmp-{PREFIX}{step}", root / f"{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    write_json(tmp / "train_state.json", train_state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # the checkpoint appears whole or not at all
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
