"""`slimdiff demo`: the whole flow on the toy world, in one command, with a report.

    from slimdiff.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(out="runs/demo", preset="bk-small"))

The demo is a list of stages (`slimdiff.stages`): each writes its result under `out/` with its
settings beside it (`NAME.stage.json`) and is reused when a rerun finds it finished with the same
settings, so a killed demo resumes where it stopped (the distillation from its last checkpoint):
  1. profile the teacher U-Net per block (params, FLOPs, latency)      -> profile.json, latency plot
  2. prune it with a preset (BK-SDM `bk-small` by default)              -> pruned/ (student + recipe)
  3. distill the pruned student from the teacher                        -> distill/ (student, log, curve)
  4. evaluate teacher, pruned and distilled on the same test prompts and seeds:
     (`slimdiff.eval.compare`: alignment score, all-correct, KID, fidelity to the teacher, each with
     a 95% CI), params, GFLOPs, U-Net and end-to-end latency                -> eval/compare.json
  5. write the report (HTML + markdown) and `report.json` (always: latency is measured anew)
By default (`step_distill=8`; `slimdiff demo --no-step-distill` leaves it out), between 3 and 4: fewer sampling steps
for the distilled student -> step-distill/, by the method the bench found best (`step_method`:
"lcm", latent consistency distillation, `slimdiff.distill.lcm`; or "snapfusion", `slimdiff.distill.step`);
it joins the evaluation as `step-distilled`, sampled as its recipe says (N steps, one U-Net call each
for LCM), and the report adds its end-to-end speed-up.

The demo's distillation settings are defined once here (`DEMO_DISTILL`, `demo_distill_settings`);
the benches import them so that their figures compare with the demo's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from slimdiff.distill import DistillConfig, distill
from slimdiff.distill.lcm import ConsistencyConfig, consistency_distill
from slimdiff.distill.step import StepDistillConfig, step_distill
from slimdiff.eval.compare import compare
from slimdiff.eval.compare import write as write_compare
from slimdiff.eval.latency import pipeline_latencies
from slimdiff.sample import fill_sampling
from slimdiff.io import read_json, write_json
from slimdiff.profile import ProfileSettings, model_latencies, profile_unet
from slimdiff.recipe import read_recipe
from slimdiff.report import plot_bars, plot_loss_curves, write_report
from slimdiff.report.tables import format_ci
from slimdiff.stages import Stage, differences, run_or_reuse, stage_seconds
from slimdiff.toy.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS
from slimdiff.train.maths import step_paths
from slimdiff.unet import apply_preset, load_unet, resolve_source, save_student, text_width
from slimdiff.sample import load_pipeline
from slimdiff.unet.presets import PRESETS
from slimdiff.modules import mobilediffusion  # noqa: F401,E402 (registers the plug-in presets md, md-lite)

MODELS = ("teacher", "pruned", "distilled")
STAGE_NAMES = ("profile", "prune", "distill", "step-distill", "evaluate")  # slimdiff.stages names, in order
STEP_MODEL = "step-distilled"  # the optional fourth row (DemoConfig.step_distill)
STEP_METHODS = ("lcm", "snapfusion")  # the first: the default (docs/bench/steps.md ranks them)
# bk-small + LCM at 8 steps is within the reference's interval (docs/bench/steps.md: 0.797 [0.746, 0.852] against
# 0.805 [0.754, 0.852]), so the default demo includes that stage (issue 20); `step_distill=None` leaves it out
DEFAULT_STEP_DISTILL = 8
# the report's quality columns (slimdiff.eval.toy): continuous first, then the saturating ones
QUALITY_KEYS = ("alignment_score", "all_correct", "alignment", "kid", "judge_fid", "psnr_to_teacher",
                "feature_cos_to_teacher")
# the settings the evaluation stage depends on (a rerun with others redoes it)
EVAL_KEYS = ("model", "preset", "distill_steps", "batch_size", "learning_rate", "feat_loss", "num_images", "steps",
             "guidance", "seed", "step_distill", "step_distill_train_steps", "step_method")

# The demo's distillation settings (slimdiff.distill.DistillConfig fields), defined once: the
# benches (bench_kd, bench_laptop, bench_asdm, bench_distill_throughput) import them.
DEMO_DISTILL_STEPS = 600  # optimiser steps; ~8 min on 2 shared cores
DEMO_DISTILL: dict[str, Any] = dict(
    data="toy",  # the toy world's scenes
    batch_size=64,  # toy latents are 8x8: cheap
    learning_rate=1e-3,  # AdamW; toy-scale (BK-SDM uses 5e-5 at batch 256 on SD)
    lr_scheduler="cosine",  # after a warm-up of min(50, max_steps // 10) steps
    feat_loss="normalized",  # LAPTOP-Diff normalized feature KD; "plain" for BK-SDM's
    seed=0,  # data order and noise
    cpu=True,  # the toy world trains on CPU
)


def demo_distill_settings(max_steps: int = DEMO_DISTILL_STEPS, **overrides) -> dict[str, Any]:
    """`DEMO_DISTILL` for `max_steps` optimiser steps (warm-up min(50, max_steps // 10)), with
    `overrides` (DistillConfig fields: batch_size, learning_rate, feat_loss, seed, ...) on top."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(DistillConfig)})
    if unknown:
        raise ValueError(f"demo_distill_settings: {unknown} are not DistillConfig fields")
    return {**DEMO_DISTILL, "max_steps": max_steps, "lr_warmup_steps": min(50, max_steps // 10), **overrides}


@dataclasses.dataclass
class DemoConfig:
    out: str = "runs/demo"  # output directory (report.html, report.md, report.json, stages)
    model: str = "toy"  # the teacher pipeline: `toy` or a local pipeline directory of the same kind
    preset: str = "bk-small"  # a slimdiff.unet.presets name
    quick: bool = False  # smaller everything: finishes in ~3 minutes on 2 CPU cores
    distill_steps: int | None = None  # optimiser steps; None: DEMO_DISTILL_STEPS = 600 (quick: 100)
    batch_size: int = DEMO_DISTILL["batch_size"]  # distillation batch (toy latents are 8x8: cheap)
    learning_rate: float = DEMO_DISTILL["learning_rate"]  # AdamW, cosine after a warm-up
    feat_loss: str = DEMO_DISTILL["feat_loss"]  # LAPTOP-Diff normalized feature KD; "plain" for BK-SDM's
    num_images: int | None = None  # test prompts per model; None: 256 (quick: 32; CIs need N >= 256)
    steps: int | None = None  # sampler steps; None: the toy pipeline's default
    guidance: float | None = None  # classifier-free guidance; None: the toy pipeline's default
    latency_repeats: int | None = None  # timed U-Net forwards per model; None: 20 (quick: 5)
    seed: int = DEMO_DISTILL["seed"]  # one seed for pruning-free steps: data order, noise, evaluation
    grid_rows: int = 8  # prompts shown in the report's side-by-side grid
    step_distill: int | None = DEFAULT_STEP_DISTILL  # student sampling steps of the step-distillation stage; None: none
    step_distill_train_steps: int | None = None  # its optimiser steps; None: 400 (quick: 20)
    step_method: str = STEP_METHODS[0]  # "lcm" (one U-Net call a step) | "snapfusion" (CFG-aware, DDIM)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"DemoConfig.preset={self.preset!r} is not a preset; valid: {list(PRESETS)}")
        for name in ("distill_steps", "num_images", "steps", "latency_repeats", "step_distill",
                     "step_distill_train_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"DemoConfig.{name}={v!r} is invalid: None or an integer >= 1")
        if self.batch_size < 1:
            raise ValueError(f"DemoConfig.batch_size={self.batch_size!r} is invalid: an integer >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"DemoConfig.learning_rate={self.learning_rate!r} is invalid: a positive number")
        if self.feat_loss not in ("plain", "normalized"):
            raise ValueError(f"DemoConfig.feat_loss={self.feat_loss!r} is invalid: 'plain' or 'normalized'")
        if self.step_method not in STEP_METHODS:
            raise ValueError(f"DemoConfig.step_method={self.step_method!r} is invalid: one of {list(STEP_METHODS)}")
        if self.step_distill is not None:
            self.check_step_schedule()

    def check_step_schedule(self) -> None:
        """`step_distill` against the model's noise schedule now, not after pruning and distilling: the
        method's config checks N (LCM: at most its grid; SnapFusion: the step trainer's own test,
        `train.maths.step_paths`, on the model's scheduler config)."""
        try:
            cfg = self.step_config("student", Path(self.out))
        except ValueError as e:
            raise ValueError(f"DemoConfig.step_distill={self.step_distill} is invalid: {e}") from None
        if not isinstance(cfg, StepDistillConfig):
            return
        _, path = resolve_source(self.model)
        sched = path / "scheduler" / "scheduler_config.json" if path is not None else None
        if sched is None or not sched.is_file():
            return  # the stage reports it
        try:
            step_paths(read_json(sched), cfg.teacher_steps, cfg.steps, sampled=True)
        except ValueError as e:
            raise ValueError(f"DemoConfig.step_distill={self.step_distill} is invalid: {e}") from None

    def resolved(self) -> dict[str, Any]:
        """The settings with every None replaced by the value used."""
        d = dataclasses.asdict(self)
        d["distill_steps"] = self.distill_steps or (100 if self.quick else DEMO_DISTILL_STEPS)
        d["num_images"] = self.num_images or (32 if self.quick else 256)
        d["steps"] = self.steps or DEFAULT_STEPS
        d["guidance"] = self.guidance if self.guidance is not None else DEFAULT_GUIDANCE
        d["latency_repeats"] = self.latency_repeats or (5 if self.quick else 20)
        d["step_distill_train_steps"] = (self.step_distill_train_steps or (20 if self.quick else 400)
                                         if self.step_distill else None)
        return d

    def distill_config(self, out: Path) -> DistillConfig:
        """The distillation stage's settings: `demo_distill_settings` with this demo's steps, batch,
        learning rate, feature loss and seed; resumes from out/distill/checkpoints when there."""
        steps, distill_dir = self.resolved()["distill_steps"], out / "distill"
        return DistillConfig(
            teacher=self.model, student=str(out / "pruned"), out=str(distill_dir),
            checkpoint_every=max(50, steps // 4), resume="latest" if (distill_dir / "checkpoints").is_dir() else None,
            cache_dir=str(out / "cache"),  # exact: VAE latent moments + text embeddings of the 4096 scenes
            **demo_distill_settings(steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                                    feat_loss=self.feat_loss, seed=self.seed))

    def step_config(self, teacher_dir: str, out: Path) -> StepDistillConfig | ConsistencyConfig:
        """The step stage's settings: the distilled student to `step_distill` sampling steps, batch 32,
        AdamW 1e-4 cosine (bench/bench_steps.py's committed settings); "lcm": LCM's defaults (50-step
        solver grid, w ~ U[2, 8], guidance embedded); "snapfusion": CFG-aware (p = 0.1) from a teacher DDIM
        schedule of 16 steps (2N when N > 8). An invalid N fails here, before any work (the config's error)."""
        n, s = self.step_distill, self.resolved()
        common = dict(teacher=self.model, student=teacher_dir, data="toy", out=str(out / "step-distill"), steps=n,
                      max_steps=s["step_distill_train_steps"], batch_size=32, learning_rate=1e-4,
                      lr_scheduler="cosine", lr_warmup_steps=s["step_distill_train_steps"] // 20, seed=self.seed,
                      cpu=True, cache_dir=str(out / "cache"), checkpoint_every=max(20, s["step_distill_train_steps"] // 4),
                      resume="latest" if (out / "step-distill" / "checkpoints").is_dir() else None)
        if self.step_method == "lcm":
            return ConsistencyConfig(method="lcm", **common)
        return StepDistillConfig(teacher_steps=16 if n <= 8 else 2 * n, cfg_prob=0.1, **common)


@dataclasses.dataclass
class DemoRun:
    """What the stages share: the settings, the loaded teacher pipeline, and each stage's models."""

    config: DemoConfig
    settings: dict[str, Any]  # config.resolved()
    out: Path
    log: Callable[[str], None] | None
    progress: bool
    pipe: Any = None  # the teacher pipeline (its U-Net swapped for timing, then restored)
    teacher: Any = None  # pipe.unet, eval mode
    unets: dict[str, Any] = dataclasses.field(default_factory=dict)  # model name -> U-Net, the report's rows
    step_pipe: Any = None  # the step-distilled pipeline (its own scheduler), when step_distill
    step_sampling: tuple[int, float] | None = None  # its (steps, guidance), from its recipe

    def say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    @property
    def latent(self) -> int:
        return self.teacher.config.sample_size

    @property
    def context(self) -> int:
        return self.pipe.tokenizer.model_max_length


def _gflops(unet, latent: int, context_length: int) -> float:
    """GFLOPs (2 x MACs, attention matmuls included) of one U-Net forward at batch 1."""
    settings = ProfileSettings(latent_size=latent, context_length=context_length, measure_latency=False)
    return profile_unet(unet, settings).total.flops / 1e9


def _check_rerun(run: DemoRun) -> None:
    """A rerun into the same out/ resumes only with the same settings; then save them."""
    saved = run.out / "demo_config.json"
    if saved.is_file():
        differ = differences(read_json(saved), run.settings, ignore=("out",))
        if differ:
            raise ValueError(f"{run.out} holds a demo run with other settings ({'; '.join(differ)}); its stages "
                             f"would be reused: choose another --out or delete it")
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(saved, run.settings)


# ------------------------------------------------------------------ stages (each: a Stage or a step)
def profile_stage(run: DemoRun) -> Stage:
    """1. the teacher U-Net's profile per block (params, FLOPs, latency at CFG batch 2) -> profile.json."""
    config, pipe = run.config, run.pipe
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def make():
        run.say("[1/5] profiling the teacher U-Net")
        settings = ProfileSettings(latent_size=run.latent, vae_scale_factor=vae_factor, context_length=run.context,
                                   batch=2, repeats=3 if config.quick else 10, seed=config.seed)
        profile_unet(run.teacher, settings, name=config.model).save_json(run.out / "profile.json")

    return Stage("profile", {k: run.settings[k] for k in ("model", "quick", "seed")}, make,
                 output=run.out / "profile.json")


def prune_stage(run: DemoRun) -> Stage:
    """2. the student pruned with the preset (weights inherited from the teacher, recipe written) -> pruned/."""
    config = run.config

    def make():
        run.say(f"[2/5] pruning with preset {config.preset}")
        student, info = apply_preset(run.teacher, config.preset)
        save_student(student, run.out / "pruned", config.model, {"preset": config.preset, **info})

    return Stage("prune", {k: run.settings[k] for k in ("model", "preset")}, make,
                 output=run.out / "pruned")


def distill_stage(run: DemoRun) -> Stage:
    """3. the pruned student distilled from the teacher (resumes from its last checkpoint) -> distill/."""
    s = run.settings

    def make():
        run.say(f"[3/5] distilling for {s['distill_steps']} steps")
        student = copy.deepcopy(run.unets["pruned"]).train()
        distill(run.config.distill_config(run.out), teacher=run.teacher, student=student, pipeline=run.pipe,
                progress=run.progress)

    keys = ("model", "preset", "distill_steps", "batch_size", "learning_rate", "feat_loss", "seed")
    return Stage("distill", {k: s[k] for k in keys}, make, output=run.out / "distill")


def step_distill_stage(run: DemoRun, step_cfg: StepDistillConfig | ConsistencyConfig) -> Stage:
    """3b. optional: the distilled student distilled to N sampling steps (LCM or SnapFusion)
    -> step-distill/ (its pipeline samples as its recipe says)."""
    s = run.settings

    def make():
        run.say(f"[3b/5] {s['step_method']}: distilling the student to {run.config.step_distill} sampling steps "
                f"({s['step_distill_train_steps']} training steps)")
        train = consistency_distill if isinstance(step_cfg, ConsistencyConfig) else step_distill
        train(step_cfg, progress=run.progress)

    keys = ("model", "preset", "distill_steps", "batch_size", "learning_rate", "feat_loss", "seed", "step_distill",
            "step_distill_train_steps", "step_method")
    return Stage("step-distill", {k: s[k] for k in keys}, make,
                 output=run.out / "step-distill")


def load_step_distilled(run: DemoRun) -> None:
    """The step-distilled pipeline joins the rows with the sampler it was trained for (LCMScheduler, or
    DDIM trailing), and the (steps, guidance) its recipe records."""
    run.step_pipe = load_pipeline(str(run.out / "step-distill" / "pipeline"))
    run.step_pipe.set_progress_bar_config(disable=True)
    run.unets[STEP_MODEL] = run.step_pipe.unet.eval()
    run.step_sampling = fill_sampling(run.step_pipe, None, None)


def evaluate_stage(run: DemoRun) -> Stage:
    """4. every model on the same prompts and seeds (one paired comparison, CIs) -> eval/compare.json,
    eval/compare.md, eval/images/MODEL/NNN.png (the report's grid)."""
    s, eval_dir = run.settings, run.out / "eval"
    key = {k: s[k] for k in EVAL_KEYS}

    def make():
        run.say(f"[4/5] evaluating {', '.join(run.unets)} on {s['num_images']} test prompts")
        names = [n for n in run.unets if n != STEP_MODEL]
        pipes = [load_pipeline(run.config.model, unet=run.unets[n]) for n in names]
        steps, scales = [s["steps"]] * len(pipes), [s["guidance"]] * len(pipes)
        if run.step_pipe is not None:  # sampled as its recipe says
            pipes, names = pipes + [run.step_pipe], names + [STEP_MODEL]
            steps, scales = steps + [run.step_sampling[0]], scales + [run.step_sampling[1]]
        comparison = compare(pipes, names=names, num_images=s["num_images"], steps=steps, guidance=scales,
                             seed=run.config.seed, progress=run.progress, keep_images=run.config.grid_rows)
        comparison["settings"]["demo"] = key
        for name, ims in comparison["images"].items():
            (eval_dir / "images" / name).mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(ims):
                im.save(eval_dir / "images" / name / f"{i:03d}.png")
        write_compare(comparison, eval_dir / "compare.json", eval_dir / "compare.md")

    return Stage("evaluate", key, make, output=eval_dir)


def measure_latency(run: DemoRun) -> tuple[dict[str, float], dict[str, float]]:
    """(U-Net ms, end-to-end ms) per model: one CFG step (batch 2) per model, then each pipeline at its
    sampling settings, both timed round-robin so that the machine's load hits all alike."""
    s, repeats = run.settings, 3 if run.config.quick else 10
    unet_ms = model_latencies(run.unets, run.latent, text_width(run.teacher), batch=2, context_length=run.context,
                              warmup=1, repeats=s["latency_repeats"])
    # each model in a pipeline of its own sharing the teacher's other components; the step-distilled one
    # with its own scheduler and sampling settings
    pipes = {name: ((run.step_pipe, *run.step_sampling) if name == STEP_MODEL else
                    (type(run.pipe)(**{**run.pipe.components, "unet": unet}), s["steps"], s["guidance"]))
             for name, unet in run.unets.items()}
    e2e_ms = pipeline_latencies(pipes, repeats=repeats)
    return unet_ms, e2e_ms


def model_summaries(run: DemoRun, results: dict, unet_ms: dict, e2e_ms: dict) -> dict[str, dict]:
    """report.json's per-model entries: quality with 95% CIs (paired with the teacher), size, speed."""
    per_model = {}
    for name, unet in run.unets.items():
        r = results[name]
        per_model[name] = {
            **{k: r.get(k) for k in QUALITY_KEYS},
            "ci": {k: r["ci"][k] for k in QUALITY_KEYS if k in r.get("ci", {})},
            "differs_from_teacher": sorted(r.get("marks", {})),
            "params": unet.num_parameters(),
            "gflops": _gflops(unet, run.latent, run.context),
            "unet_latency_ms": unet_ms[name],
            "pipeline_latency_ms": e2e_ms[name],
        }
    t = per_model["teacher"]
    for m in per_model.values():
        m["params_ratio"] = m["params"] / t["params"]
        m["unet_speedup"] = t["unet_latency_ms"] / m["unet_latency_ms"]
        m["pipeline_speedup"] = t["pipeline_latency_ms"] / m["pipeline_latency_ms"]
        m["all_correct_recovered"] = m["all_correct"] / t["all_correct"] if t["all_correct"] else None
    return per_model


def table_rows(per_model: dict[str, dict], results: dict) -> list[dict]:
    """The report's table: value [95% CI] (`*`: differs from the teacher), size and speed; the
    rendered images' scores (the world's ceiling) last when the comparison has them."""
    rows = []
    for name, m in per_model.items():
        row = {"model": name}
        for k in QUALITY_KEYS:
            mark = "*" if k in m["differs_from_teacher"] else ""
            row[k] = format_ci(m[k], m["ci"].get(k), mark) if m[k] is not None else None
        row.update({k: m[k] for k in ("params", "gflops", "unet_latency_ms", "pipeline_latency_ms", "unet_speedup",
                                      "pipeline_speedup")})
        rows.append(row)
    ceiling = results.get("rendered (ceiling)")
    if ceiling:
        rows.append({"model": "rendered (ceiling)",
                     **{k: format_ci(ceiling.get(k), ceiling["ci"].get(k)) if ceiling.get(k) is not None else None
                        for k in QUALITY_KEYS}})
    return rows


def report_intro(run: DemoRun) -> str:
    """The report's opening paragraph: what was compared and how to read the numbers."""
    config, s = run.config, run.settings
    intro = (f"Teacher `{config.model}`, student pruned with `{config.preset}` and distilled for "
             f"{s['distill_steps']} steps; {s['num_images']} test prompts per model, {s['steps']} sampler "
             f"steps, guidance {s['guidance']}, seed {config.seed}, the same initial noise for every model. "
             f"Quality: value [95% bootstrap CI over the prompts]; `*`: differs from the teacher (the "
             f"paired difference's 95% CI excludes 0). Fidelity: PSNR and judge-feature cosine of each "
             f"image against the teacher's for the same prompt and noise. Latency: median over repeats on "
             f"{torch.get_num_threads()} CPU threads, U-Net timed round-robin in one run.")
    if run.step_pipe is not None:
        step_steps, step_guidance = run.step_sampling
        how = ("by latent consistency distillation (LCM, guidance embedded: one U-Net call a step, LCMScheduler)"
               if config.step_method == "lcm" else f"by SnapFusion's CFG-aware step distillation to {step_steps} "
               "DDIM steps (two U-Net calls a step)")
        intro += (f" `{STEP_MODEL}`: the distilled student step-distilled {how} for "
                  f"{s['step_distill_train_steps']} training steps, sampled with its own {step_steps} steps "
                  f"and guidance {step_guidance}; U-Net ms: the same batch-2 forward as every row's; pipeline "
                  f"speed-up: end to end (text encoder, every U-Net call, VAE decoder) against the teacher at "
                  f"{s['steps']} steps.")
    times = stage_times(run.out)
    if times and all(v is not None for v in times.values()):
        intro += (" Stage wall times (the run that made each; the report itself is redone every run): "
                  + ", ".join(f"{name} {v / 60:.1f} min" for name, v in times.items())
                  + f"; {sum(times.values()) / 60:.1f} min in all.")
    return intro


def stage_times(out: Path) -> dict[str, float | None]:
    """{stage: wall seconds of the run that made it} for the stages this demo has (None: not recorded)."""
    return {name: stage_seconds(name, out) for name in STAGE_NAMES if (out / f"{name}.stage.json").is_file()}


def report_stage(run: DemoRun, t_start: float) -> dict:
    """5. latency (measured anew on every run), report.json, report.html and report.md; returns the summary."""
    out, s, config = run.out, run.settings, run.config
    run.say("[5/5] measuring latency and writing the report")
    comparison = read_json(out / "eval" / "compare.json")
    images = {name: [Image.open(p).copy() for p in sorted((out / "eval" / "images" / name).glob("*.png"))]
              for name in run.unets}
    results = {row["model"]: row for row in comparison["rows"]}
    unet_ms, e2e_ms = measure_latency(run)
    per_model = model_summaries(run, results, unet_ms, e2e_ms)
    distilled = read_recipe(out / "distill").get("distill", {})
    summary = {
        **per_model,
        "settings": s,
        "distill": {"steps": distilled.get("steps", s["distill_steps"]),
                    "steps_per_sec": distilled.get("steps_per_sec")},
        "threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_start,  # this invocation (reused stages not counted)
        # the wall seconds of the run that made each stage (None: reused from before times were recorded)
        "stage_seconds": stage_times(out),
    }
    train_log = [json.loads(line) for line in open(out / "distill" / "train_log.jsonl", encoding="utf-8")
                 if line.strip()]
    plots = {
        "U-Net latency per model (ms, one CFG step)": plot_bars(unet_ms, "ms", out / "unet_latency.png"),
        "Teacher U-Net latency per block": out / "teacher_block_latency.png",
        "Distillation loss curves": (plot_loss_curves(train_log, out / "loss_curves.png") if train_log
                                     else out / "distill" / "loss_curves.png"),
    }
    write_json(out / "report.json", summary)
    profile = read_json(out / "profile.json")
    html_path, md_path = write_report(
        out, f"slimdiff demo: {config.preset} on the {config.model} world", table_rows(per_model, results),
        images=images, prompts=comparison.get("prompts", [])[: config.grid_rows], plots=plots,
        extra_sections={
            "Settings": json.dumps(s, indent=2),
            "Teacher profile per block": [{k: b[k] for k in ("name", "params", "flops", "latency_ms",
                                                             "latency_share")} for b in profile["blocks"]],
        },
        intro=report_intro(run),
    )
    summary["report_html"], summary["report_md"] = str(html_path), str(md_path)
    write_json(out / "report.json", summary)
    run.say(f"report: {html_path}")
    return summary


def run_demo(config: DemoConfig, log: Callable[[str], None] | None = print, progress: bool = True) -> dict:
    """Run the demo; return the `report.json` content. A numbered-step orchestration of the stages
    (see the module docstring): each stage runs, or is reused when finished with the same settings."""
    t_start = time.perf_counter()
    run = DemoRun(config, config.resolved(), Path(config.out), log, progress)
    # 0. the step-distillation settings first (an invalid N fails before any work), then the rerun check
    step_cfg = config.step_config(str(run.out / "distill"), run.out) if config.step_distill else None
    _check_rerun(run)
    reuse_log = (lambda msg: run.say(f"  stage {msg}")) if log is not None else None

    # 1. the teacher pipeline and its U-Net profile per block (plotted on every run)
    run.pipe = load_pipeline(config.model)
    run.pipe.set_progress_bar_config(disable=True)
    run.teacher = run.unets["teacher"] = run.pipe.unet.eval()
    run_or_reuse(profile_stage(run), run.out, reuse_log)
    profile = read_json(run.out / "profile.json")
    plot_bars({b["name"]: b["latency_ms"] for b in profile["blocks"]}, "ms (CFG batch 2)",
              run.out / "teacher_block_latency.png", title="Teacher U-Net latency per block")
    # 2. prune; 3. distill; 3b. optionally step-distill
    run_or_reuse(prune_stage(run), run.out, reuse_log)
    run.unets["pruned"] = load_unet(run.out / "pruned").eval()
    run_or_reuse(distill_stage(run), run.out, reuse_log)
    run.unets["distilled"] = load_unet(run.out / "distill").eval()
    if step_cfg is not None:
        run_or_reuse(step_distill_stage(run, step_cfg), run.out, reuse_log)
        load_step_distilled(run)
    # 4. evaluate every model on the same prompts and noise; 5. latency and the report
    run_or_reuse(evaluate_stage(run), run.out, reuse_log)
    return report_stage(run, t_start)
