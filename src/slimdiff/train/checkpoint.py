"""Atomic, resumable checkpoints on top of `accelerate`'s `save_state` / `load_state`.

    out/checkpoints/checkpoint-<step>/
        model.safetensors        student weights (unwrapped names: loads with 1 or N processes)
        optimizer.bin            AdamW state (trainable parameters only; loaded with weights_only=True)
        lr_scheduler.json        LR schedule state
        ema.safetensors/.json    EMA shadow weights and counters (when on)
        random_states_<rank>.pkl RNG states of each process (accelerate's; weights_only=True)
        train_state.json         step, global batch, processes and the run's config (a TrainConfig)

No state is pickled by slimdiff: accelerate's `register_for_checkpointing` would write
`custom_checkpoint_<i>.pkl` and read it back with `weights_only=False`, which runs any code a
crafted file holds; a checkpoint with such a file is refused unread.
Written into `.tmp-checkpoint-<step>` and renamed when complete, so a directory named
`checkpoint-<step>` is always whole; a failed save (e.g. a full disk) removes its temp dir, and
temp dirs or incomplete `checkpoint-*` dirs a kill left behind are removed at the next save.
`--resume latest` takes the newest checkpoint that passes `checkpoint_problems` (damaged ones
are skipped with a warning naming them). The data position needs no state of its own: batches,
noise, timesteps and dropped units are pure functions of (seed, step) (see `slimdiff.train.loop`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slimdiff.io import apply_file_modes, atomic_write, load_torch_file, read_json, to_jsonable, write_json

PREFIX = "checkpoint-"
_DDP_PREFIX = "module."
_TMP, _DELETE = f".tmp-{PREFIX}", f".tmp-delete-{PREFIX}"  # saving / being deleted


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
    """The checkpoint dir to resume from: `latest` (None when the run has none yet) or a path.

    `latest` skips damaged checkpoints (a warning names each) and takes the newest intact one;
    ValueError when every checkpoint is damaged. A named checkpoint must be intact.
    """
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(Path(out) / "checkpoints")
        skipped = []
        for _, path in reversed(found):
            problems = checkpoint_problems(path)
            if not problems:
                if skipped:
                    warnings.warn(f"--resume latest: skipped damaged checkpoint(s) {'; '.join(skipped)}; "
                                  f"resuming from {path}", stacklevel=2)
                return path
            skipped.append(f"{path} ({problems[0]})")
        if skipped:
            raise ValueError(f"--resume latest: no intact checkpoint under {Path(out) / 'checkpoints'}: "
                             + "; ".join(skipped))
        return None
    path = Path(resume)
    if not (path / "train_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume!r}: not a checkpoint directory (no train_state.json); "
                                f"use 'latest' or an {Path(out) / 'checkpoints' / (PREFIX + 'N')} directory")
    problems = checkpoint_problems(path)
    if problems:
        raise ValueError(f"--resume {resume}: the checkpoint is damaged: {'; '.join(problems)}")
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
    problems = cfg.resume_mismatches(absolute_paths(state["config"], cfg.PATH_FIELDS, state.get("cwd")))
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


def absolute_paths(saved: dict, fields: tuple[str, ...], cwd: str | None) -> dict:
    """`saved` with its relative `fields` made absolute against `cwd`, the working directory of the
    run that saved them (so a run resumed from another directory compares the same files); values
    that were no existing path there (built-in names such as `toy`, globs) are kept as written."""
    if cwd is None:  # a checkpoint written before the working directory was recorded
        return saved
    fixed = dict(saved)
    for k in fields:
        v = saved.get(k)
        if isinstance(v, str) and not os.path.isabs(v) and os.path.exists(os.path.join(cwd, v)):
            fixed[k] = os.path.join(cwd, v)
    return fixed


def pickled_file_problem(directory: Path) -> str | None:
    """Why a checkpoint's torch files (optimizer.bin, random_states_*.pkl) cannot be read with
    `weights_only=True` (the first such file, named), or None when they all can."""
    for f in sorted([*directory.glob("*.bin"), *directory.glob("*.pkl")]):
        try:
            load_torch_file(f, "checkpoint file")
        except ValueError as e:
            return f"checkpoint {directory} could not be loaded: {e}"
    return None


def read_train_state(path: Path) -> dict:
    return read_json(path / "train_state.json")


# ---------------------------------------------------------------------------------- integrity


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (bad header, truncated data), or None: reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        return f"{path} is not a readable safetensors file ({type(e).__name__})"
    if 8 + n + end > size:
        return f"{path} is truncated ({size} bytes, its header needs {8 + n + end})"
    return None


def checkpoint_problems(path: str | Path) -> list[str]:
    """What is missing or damaged in a checkpoint directory (empty when it looks intact).

    Fast structural checks, no tensor is loaded: train_state.json parses; every .safetensors
    header matches its size; every torch file (.bin, .pkl: zip archives) has its central
    directory (a truncated one has not); no pickled `custom_checkpoint_*.pkl` (refused unread).
    """
    path = Path(path)
    problems = []
    try:
        read_train_state(path)
    except (OSError, ValueError) as e:
        problems.append(str(e))
    if path.is_dir() and not any(p.name.startswith(("model", "pytorch_model", "shard-")) for p in path.iterdir()):
        problems.append(f"{path / 'model.safetensors'} is missing")  # (FSDP2: shard-<rank>-of-<world>.*)
    for f in sorted(path.iterdir()) if path.is_dir() else []:
        if re.fullmatch(r"custom_checkpoint_\d+\.pkl", f.name):
            problems.append(f"{f} is pickled state, which could run code when loaded: not loaded (written by "
                            f"slimdiff < 0.2 or by hand); delete it only if you trust it came from an older run")
        elif f.suffix == ".safetensors":
            problem = safetensors_problem(f)
            if problem:
                problems.append(problem)
        elif f.suffix in (".bin", ".pkl") and not zipfile.is_zipfile(f):
            problems.append(f"{f} is truncated or not a torch file")
        elif f.suffix == ".json" and f.name != "train_state.json":
            try:
                read_json(f)
            except ValueError as e:
                problems.append(str(e))
    return problems


def remove_junk(root: str | Path) -> list[Path]:
    """Delete what killed saves or rotations left under `root`: temp dirs and `checkpoint-N` dirs
    without train_state.json (written last, so such a dir never was a whole checkpoint)."""
    root = Path(root)
    if not root.is_dir():
        return []
    junk = [p for p in root.iterdir() if p.is_dir() and (
        p.name.startswith((_TMP, _DELETE)) or (re.fullmatch(rf"{PREFIX}\d+", p.name)
                                               and not (p / "train_state.json").is_file()))]
    for p in junk:
        shutil.rmtree(p, ignore_errors=True)
    return junk


# ---------------------------------------------------------------------------------- state files


def _split_tensors(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """`obj` with every tensor replaced by {"__tensor__": name}, the tensors collected in `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _split_tensors(v, tensors, f"{key}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"state entry {key} is a {type(obj).__name__}: only tensors and JSON values are saved")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def save_state(directory: str | Path, name: str, state: dict) -> None:
    """Write a state dict as `name.json` (+ `name.safetensors` for its tensors): nothing pickled."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(state, tensors, "state")
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"))
    write_json(directory / f"{name}.json", skeleton)


def load_state(directory: str | Path, name: str) -> dict:
    """Read what `save_state` wrote; errors name the file."""
    directory = Path(directory)
    skeleton = read_json(directory / f"{name}.json")
    tensors = {}
    if (directory / f"{name}.safetensors").is_file():
        try:
            tensors = load_file(str(directory / f"{name}.safetensors"))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{directory / (name + '.safetensors')} is damaged ({e})") from None
    try:
        return _join_tensors(skeleton, tensors)
    except KeyError as e:
        raise ValueError(f"{directory / (name + '.json')} names tensor {e} that {name}.safetensors lacks") from None


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
        for i in range(len(weights)):  # contiguous: channels-last weights (safetensors stores dense rows)
            weights[i] = {k: v.contiguous() for k, v in _strip(weights[i]).items()}

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            state = _strip(load_file(os.path.join(input_dir, name)))
            accelerator.unwrap_model(model).load_state_dict(state, strict=True)
        models.clear()  # loaded here; accelerate skips them

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def is_checkpoint_step(cfg, step: int) -> bool:
    """Whether `maybe_save` writes a checkpoint after optimiser step `step`."""
    return bool(cfg.checkpoint_every) and not step % cfg.checkpoint_every and step < cfg.max_steps


def maybe_save(accelerator, root: str | Path, cfg, step: int, world: int, states=None, before_save=None,
               write=None) -> Path | None:
    """After optimiser step `step`: a checkpoint every `cfg.checkpoint_every` steps (0: never),
    none at the last step (the run's output follows), with the run's config and global batch.

    `states()`: name -> state dict saved beside it with `save_state` (LR schedule, EMA; no pickles);
    `before_save()`: a check run first (e.g. that no weight is NaN)."""
    if not is_checkpoint_step(cfg, step):
        return None
    if before_save is not None:
        before_save()
    state = {"step": step, "micro_batch_global": cfg.batch_size * world, "num_processes": world,
             "config": cfg.to_dict(), "cwd": os.getcwd()}  # cwd: where the config's relative paths start
    return save_checkpoint(accelerator, root, step, state, cfg.checkpoints_keep,
                           states=states() if states is not None else None, write=write)


def save_checkpoint(accelerator, root: str | Path, step: int, train_state: dict, keep: int,
                    states: dict[str, dict] | None = None, write=None) -> Path | None:
    """Every process calls this; returns the final dir on the main process.

    `states`: name -> state dict (tensors and JSON values) saved with `save_state`, e.g. the LR
    schedule and the EMA. `write(dir)`: what every process writes instead of accelerate's
    `save_state` (FSDP2: `slimdiff.train.sharded.save`). A save that fails (a full disk, ...) removes its partial directory and
    raises OSError naming it; the earlier checkpoints are kept.
    """
    root = Path(root)
    tmp, final = root / f"{_TMP}{step}", root / f"{PREFIX}{step}"
    if accelerator.is_main_process:
        remove_junk(root)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp)) if write is None else write(tmp)
        if accelerator.is_main_process:
            for name, state in (states or {}).items():
                save_state(tmp, name, state)
            write_json(tmp / "train_state.json", train_state)
            apply_file_modes(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"could not write checkpoint {final} ({type(e).__name__}: {e}); its partial files were "
                      f"removed, the earlier checkpoints are kept (disk full?)") from e
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    if final.exists():
        os.replace(final, root / f"{_DELETE}{step}")
    os.replace(tmp, final)  # the checkpoint appears whole or not at all
    for _, old in list_checkpoints(root)[:-keep]:
        doomed = root / f"{_DELETE}{old.name[len(PREFIX):]}"
        os.replace(old, doomed)  # renamed first: a kill mid-delete leaves a temp name, not a bad checkpoint
    remove_junk(root)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------- the step log


class JsonlLog:
    """The per-step log: one JSON object a line, flushed every step; truncated on resume.

    On resume a partial last line (a kill mid-write) is dropped; a damaged line before it is an
    error naming the file and line. Records are strict JSON (no NaN / Infinity).
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            atomic_write(path, "")
        else:  # keep the steps the checkpoint covers; a killed run may have logged past it
            kept = []
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines):
                        break  # the partial last line of a killed run
                    raise ValueError(f"{path}:{n} is not valid JSON; the log is damaged (delete the line to resume)")
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            atomic_write(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
                f.flush()
