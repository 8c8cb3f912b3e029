"""The one training loop on Hugging Face accelerate; a method trainer says what one step computes.

    class MyTrainer(Trainer):
        name = "my-method"
        def __init__(self, config, progress=True):
            super().__init__(config, progress)
            self.start()                                   # accelerate, outputs, resume point
            ...                                            # load models, data: set self.dataset_size
            self.prepare(model, trainable)                 # optimiser, LR schedule, EMA, wrap, resume
        def _micro_step(self, batch, position): return {"loss": ..., "loss_x": ...}
        def _result(self, model, losses, steps_per_sec, log_path): ...   # write outputs, return the result

What the loop owns: the batches (a seeded permutation per epoch, `GlobalBatchSampler`), optimiser
steps with accumulation and clipping (`optimizer_step`), the LR schedule, the EMA, the JSONL log
and progress bar (`finish_step`), atomic checkpoints without pickles and exact resume
(`slimdiff.train.checkpoint`), the non-finite stop, the per-phase profile (`--profile-steps`),
the loss plot. Hooks a method may override: `batches` (what a micro-batch is), `_on_step_start`, `_on_step_end`,
`_start_message`, `_make_optimizer`, `_on_wrapped`, `_sharded_emas`, `_finalize`, `close`.

Determinism. Everything random in micro-step p (= step * grad_accum + micro) is drawn from
generators seeded with (seed, p) for the whole *global* batch (`random_generator`), and each
process takes its rows. So a run's batches are a pure function of (seed, step): a resumed run
sees the batches an uninterrupted one would, and N processes with batch b see what 1 process
with batch N*b sees (losses are batch means; DDP averages them).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs
from diffusers.optimization import get_scheduler
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from slimdiff.io import check_disjoint
from slimdiff.report.plots import plot_loss_curves
from slimdiff.train import checkpoint as ckpt
from slimdiff.train import sharded, speed
from slimdiff.train.checkpoint import JsonlLog
from slimdiff.train.ema import EMA
from slimdiff.train.speed import DTYPES

DATA_STREAM, NOISE_STREAM, DEPTH_STREAM = 0, 1, 2  # independent random streams of `random_generator`


def random_generator(seed: int, position: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, position, stream)."""
    a, b = np.random.SeedSequence([seed, position, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(a) << 32) | int(b))


class GlobalBatchSampler(Sampler):
    """This process's indices for micro-batches `start..stop-1`.

    Micro-batch p of the global batch G = batch_size * world is slice j = p mod (n // G) of a
    seeded permutation for epoch p // (n // G); process r takes rows [r*b, (r+1)*b).
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, start: int, stop: int):
        self.n, self.b, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.global_batch = batch_size * world
        self.per_epoch = n // self.global_batch
        if self.per_epoch < 1:
            raise ValueError(f"the data set has {n} items, fewer than the global batch {self.global_batch} "
                             f"(batch_size {batch_size} x {world} processes)")
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def epoch_of(self, p: int) -> int:
        return p // self.per_epoch

    def __iter__(self):
        epoch, perm = None, None
        for p in range(self.start, self.stop):
            e, j = divmod(p, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=random_generator(self.seed, e, DATA_STREAM)).tolist()
            rows = perm[j * self.global_batch:(j + 1) * self.global_batch]
            yield rows[self.rank * self.b:(self.rank + 1) * self.b]


class NonFiniteLossError(ValueError):
    """The loss (or the weights) became NaN or infinite: the run diverged and is stopped."""


class Trainer:
    """The loop (see the module doc). A subclass calls `start()` and `prepare()` in its set-up,
    sets `dataset_size`, and implements `_micro_step` and `_result`."""

    name = "train"  # progress bar and messages (a subclass names its method)

    def __init__(self, config, progress: bool = True):
        self.cfg, self.progress, self.out = config, progress, Path(config.out)
        self.resolution: int | None = None  # image size in pixels, for the profile's title
        self.ema: EMA | None = None
        self.timer = speed.PhaseTimer(enabled=False)  # on for the profiled steps

    # ------------------------------------------------------------------------------ set-up

    def start(self, find_unused_parameters: bool = False, inputs: dict[str, Any] | None = None) -> None:
        """Set-up steps every run shares: 1. accelerate (device, processes, mixed precision,
        accumulation); 2. the outputs apart from `inputs` (flag -> path) and the resume point, found
        before anything loads so a mismatched config fails first (junk of killed saves removed)."""
        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum, cfg.cpu, find_unused_parameters)
        self.rank, self.world, self.device = acc.process_index, acc.num_processes, acc.device
        self.dtype = DTYPES[cfg.mixed_precision]
        self.timer = speed.PhaseTimer(enabled=False, cuda=self.device.type == "cuda")
        if inputs is not None:
            check_disjoint(self.out, inputs)
        if acc.is_main_process:
            ckpt.remove_junk(self.out / "checkpoints")
        acc.wait_for_everyone()
        self.resume_dir, self.start_step = ckpt.resume_point(cfg, self.out, self.world)

    def prepare(self, model: nn.Module, trainable: list[nn.Parameter]) -> None:
        """The optimiser over `trainable`, the LR schedule, the EMA; `model` wrapped by accelerate
        (`self.model`); the resume checkpoint loaded (LR schedule and EMA: JSON + safetensors)."""
        cfg, acc = self.cfg, self.accelerator
        self.trainable = trainable
        self.optimizer = self._make_optimizer(trainable)
        # stepped once per optimiser step by us (not prepared: accelerate would step it per process)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_steps)
        self.fsdp2 = sharded.is_fsdp2(acc)
        self.plain = sharded.meta_copy(model) if self.fsdp2 else None  # for the gathered result
        names = {id(q): n for n, q in model.named_parameters()}
        trainable_names = [names[id(q)] for q in trainable]
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        # FSDP2 replaces the parameters by sharded DTensors: the trainable list follows them
        params = dict(acc.unwrap_model(self.model).named_parameters())
        self.trainable = trainable = [params[n] for n in trainable_names]
        self.ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay else None  # sharded like the parameters
        self._on_wrapped()
        ckpt.install_portable_model_hooks(acc)
        if self.resume_dir is None:
            return
        try:
            if self.fsdp2:
                sharded.load(self.resume_dir, acc, self.model, self.optimizer, self._sharded_emas(),
                             self._sharded_parts())
            else:
                acc.load_state(str(self.resume_dir))
            self.lr_scheduler.load_state_dict(ckpt.load_state(self.resume_dir, "lr_scheduler"))
            if self.ema is not None and not self.fsdp2:
                self.ema.load_state_dict(ckpt.load_state(self.resume_dir, "ema"))
        except (ValueError, FileNotFoundError):
            raise
        except Exception as e:  # torch / safetensors errors that name no file
            raise ValueError(ckpt.pickled_file_problem(self.resume_dir) or f"checkpoint {self.resume_dir} could not be "
                             f"loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Hook: the optimiser (default: torch's AdamW with the config's learning rate and weight decay)."""
        return torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.adam_weight_decay)

    # ------------------------------------------------------------------------------ hooks of a step

    def batches(self, sampler: GlobalBatchSampler) -> Iterator:
        """Hook: the micro-batches, one per index list of `sampler` (default: the index lists)."""
        return iter(sampler)

    def _on_wrapped(self) -> None:
        """Hook: called in `prepare` once the model is wrapped (sharded under FSDP2) and the EMA built,
        before a checkpoint is loaded (e.g. shard a target network like the student)."""

    def _sharded_emas(self) -> dict[str, EMA | None]:
        """Hook: the averages each process's FSDP2 shard file holds, by name (default: the EMA)."""
        return {"ema": self.ema}

    def _sharded_parts(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        """Hook: other FSDP2-sharded modules with their own optimiser, by name (default: none)."""
        return {}

    def _on_step_start(self, step: int) -> None:
        """Hook: called before optimiser step `step` (0-based), also the first step of a resumed run."""

    def _on_step_end(self, step: int) -> None:
        """Hook: called after optimiser step `step` (0-based) and the EMA update, before its checkpoint
        (e.g. a consistency model's target network follows the weights here)."""

    def _micro_step(self, batch, position: int) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch (global micro-batch `position`); `terms["loss"]` is backpropagated."""
        raise NotImplementedError

    def _start_message(self) -> str | None:
        """Hook: a line written above the progress bar when the run starts."""
        return None

    # ------------------------------------------------------------------------------ the loop

    def run(self):
        """Train, write the outputs, return the result; `close()` in any case."""
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Hook: undo what set-up did to the caller's modules (after `run`, or a failed set-up)."""

    def _run(self):
        cfg, acc = self.cfg, self.accelerator
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        log = JsonlLog(self.out / "train_log.jsonl", self.start_step if self.resume_dir else None, main)
        sampler = GlobalBatchSampler(self.dataset_size, cfg.batch_size, self.rank, self.world, cfg.seed,
                                     start=self.start_step * cfg.grad_accum, stop=cfg.max_steps * cfg.grad_accum)
        batches = self.batches(sampler)

        def next_batch():
            with self.timer("data"):
                return next(batches)

        bar = progress_bar(cfg.max_steps, self.start_step, enabled=self.progress and main, desc=self.name)
        message = self._start_message()
        if message and self.progress and main:
            bar.write(message)
        record: dict = {}
        pending: list[tuple] = []  # finish_step arguments of steps not yet logged (no host sync yet)
        profiled = range(self.start_step + 1, self.start_step + 1 + cfg.profile_steps)  # the first: warm-up
        t0 = time.perf_counter()
        for step in range(self.start_step, cfg.max_steps):
            self.timer.enabled = step in profiled
            self._on_step_start(step)
            sums, grad_norm = optimizer_step(acc, self.model, self.optimizer, self.trainable, step, cfg.grad_accum,
                                             cfg.max_grad_norm, lambda p: self._micro_step(next_batch(), p),
                                             timer=self.timer)
            with self.timer("optimizer"):
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.trainable)
                self._on_step_end(step)
            with self.timer("logging+syncs"):
                pending.append((sums, step + 1, sampler.epoch_of((step + 1) * cfg.grad_accum - 1),
                                self.lr_scheduler.get_last_lr()[0], grad_norm, time.perf_counter()))
                saving = ckpt.is_checkpoint_step(cfg, step + 1)
                if len(pending) >= cfg.log_every or saving or step + 1 == cfg.max_steps:
                    for args in pending:  # the first reads the device; the others are ready by then
                        record = finish_step(acc, log, bar, *args[:5], t0, on_nonfinite=self._stop_diverged,
                                             now=args[5])
                    pending = []
                ckpt.maybe_save(acc, self.out / "checkpoints", cfg, step + 1, self.world,
                                states=self._checkpoint_states, before_save=lambda: self._check_finite_weights(step + 1),
                                write=self._write_shards if self.fsdp2 else None)
            self.timer.end_step()
        elapsed = time.perf_counter() - t0
        if cfg.profile_steps and main:
            size = f", {self.resolution} px" if self.resolution else ""
            speed.write_profile(self.timer.summary(), self.out,
                                f"{self.name}, {speed.about_run(self.device)}, batch {cfg.batch_size}{size}")
        bar.close()
        steps_done = cfg.max_steps - self.start_step
        return self._finish(record, steps_done / elapsed if elapsed > 0 else float("nan"), log.path)

    def _checkpoint_states(self) -> dict[str, dict]:
        """What a checkpoint holds beside accelerate's model/optimizer state (JSON + safetensors);
        under FSDP2 the EMA is in each process's shard file."""
        ema = {"ema": self.ema.state_dict()} if self.ema and not self.fsdp2 else {}
        return {"lr_scheduler": self.lr_scheduler.state_dict(), **ema}

    def _write_shards(self, directory: Path) -> None:
        sharded.save(directory, self.accelerator, self.model, self.optimizer, self._sharded_emas(),
                     self._sharded_parts())

    def _check_finite_weights(self, step: int) -> None:
        """Stop before NaN / inf weights are saved (a checkpoint or the result)."""
        tensors = [*self.trainable, *(self.ema.shadow if self.ema is not None else [])]
        if not sharded.all_finite(tensors, self.accelerator):
            self._stop_diverged(step, {"weights": float("nan")})

    def _stop_diverged(self, step: int, terms: dict[str, float]) -> None:
        found = ckpt.list_checkpoints(self.out / "checkpoints")
        last = f"the last good checkpoint is {found[-1][1]} (resume it with a lower --lr)" if found else \
            "no checkpoint was written yet"
        shown = ", ".join(f"{k} {v}" for k, v in terms.items() if not np.isfinite(v))
        raise NonFiniteLossError(f"{self.name} stopped at step {step}: non-finite values ({shown}); the run diverged "
                                 f"(learning rate too high?). Nothing was saved as the result; {last}")

    # ------------------------------------------------------------------------------ outputs

    def _finish(self, record: dict, steps_per_sec: float, log_path: Path):
        """The trained model, plain (`_finalize`), finite, with the EMA weights when EMA is on, in
        eval mode; then `_result` writes the outputs (on the main process) and builds the result."""
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model)
        if self.fsdp2:  # the full weights (EMA's when on) gathered into a plain copy on every process
            self._check_finite_weights(cfg.max_steps)
            if self.ema is not None:
                self.ema.copy_to(self.trainable)
            model = sharded.gathered(self.model, self.plain)
        self._finalize(model)
        self._check_finite_weights(cfg.max_steps)
        if self.ema is not None and not self.fsdp2:
            self.ema.copy_to(self.trainable)
        model.eval().requires_grad_(False)
        losses = {k: v for k, v in record.items() if k.startswith("loss")}
        result = self._result(model, losses, steps_per_sec, log_path)
        acc.wait_for_everyone()
        acc.free_memory()
        return result

    def _finalize(self, model: nn.Module) -> None:
        """Hook: remove what training added to the unwrapped model (hooks, patches) before it is saved."""

    def _result(self, model: nn.Module, losses: dict[str, float], steps_per_sec: float, log_path: Path):
        """Write the outputs (weights, recipe.json, plot: on the main process) and return the run's result."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------- helpers


def make_accelerator(mixed_precision: str, grad_accum: int, cpu: bool, find_unused_parameters: bool = False):
    """The `Accelerator` of a training run (state reset first for in-process runs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # in-process runs (tests, `slimdiff demo`) may differ in mixed precision / accumulation
        AcceleratorState._reset_state()
        GradientState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    acc = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                      cpu=cpu, kwargs_handlers=[ddp])
    sharded.enable_fsdp2_on_cpu(acc)
    return acc


def optimizer_step(acc, model, optimizer, trainable, step: int, grad_accum: int, max_grad_norm: float | None,
                   micro_step, timer=None) -> tuple[dict[str, torch.Tensor], Any]:
    """One optimiser step of `grad_accum` micro-steps; `micro_step(position)` returns the loss terms
    of micro-batch `position = step * grad_accum + micro` (`terms["loss"]` is backpropagated).
    Returns the terms averaged over the micro-steps and the clipped gradient norm (None: no clipping).
    `timer(phase)`: a context timing "backward" and "optimizer" (speed.PhaseTimer)."""
    timer = timer or (lambda phase: contextlib.nullcontext())
    sums: dict[str, torch.Tensor] = {}
    grad_norm = None
    for micro in range(grad_accum):
        with acc.accumulate(model):
            terms = micro_step(step * grad_accum + micro)
            with timer("backward"):
                acc.backward(terms["loss"])  # accelerate divides by grad_accum
            with timer("optimizer"):
                if acc.sync_gradients and max_grad_norm is not None:
                    grad_norm = acc.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()  # a no-op until the last micro-step
                optimizer.zero_grad(set_to_none=True)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / grad_accum
    return sums, grad_norm


def finish_step(acc, log: JsonlLog, bar, sums: dict[str, torch.Tensor], step: int, epoch: int, lr: float,
                grad_norm, t0: float, on_nonfinite=None, now: float | None = None) -> dict:
    """Log optimiser step `step` (every term, averaged over micro-steps and processes) and advance
    the progress bar; returns the record. `on_nonfinite(step, terms)` is called (and should raise)
    before a NaN / inf term is logged. `now`: the step's end time (default: now), for `time_s`."""
    keys = sorted(sums)
    values = acc.reduce(torch.stack([sums[k] for k in keys]), reduction="mean").tolist()
    if on_nonfinite is not None and not all(np.isfinite(values)):
        on_nonfinite(step, dict(zip(keys, values)))
    record = {"step": step, "epoch": epoch, "lr": lr, **dict(zip(keys, values))}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record["time_s"] = round((now if now is not None else time.perf_counter()) - t0, 4)
    log.write(record)
    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss")}, refresh=False)
    bar.update(1)
    return record


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train"):
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, desc=desc)


def plot_losses(log_path: Path, png: Path, keys: list[str], title: str = "distillation losses") -> Path | None:
    """Loss curves of every logged term from the JSONL log (None when no step was logged)."""
    if not keys or not log_path.is_file() or not log_path.read_text().strip():
        return None
    return plot_loss_curves(log_path, png, keys=keys, title=title)
