"""`slimdiff demo`: the whole flow on the toy world, in one command, with a report.

    from slimdiff.demo import DemoConfig, run_demo
    summary = run_demo(DemoConfig(out="runs/demo", preset="bk-small"))

Steps (each writes its result under `out/` and is skipped when a rerun finds it finished, so a
killed demo resumes where it stopped; the distillation resumes from its last checkpoint):
  1. profile the teacher U-Net per block (params, FLOPs, latency)      -> profile.json, latency plot
  2. prune it with a preset (BK-SDM `bk-small` by default)              -> pruned/ (student + recipe)
  3. distill the pruned student from the teacher                        -> distill/ (student, log, curve)
  4. evaluate teacher, pruned and distilled on the same test prompts and seeds:
     (`slimdiff.eval.compare`: alignment score, all-correct, KID, fidelity to the teacher, each with
     a 95% CI), params, GFLOPs, U-Net and end-to-end latency                -> eval/compare.json
  5. write the report (HTML + markdown) and `report.json`
Optional (`step_distill=N`, `slimdiff demo --step-distill 8`), between 3 and 4: CFG-aware step
distillation (`slimdiff.distill.step`) of the distilled student to N sampling steps  -> step-distill/;
it joins the evaluation as `step-distilled`, sampled as its recipe says (N DDIM steps), and the
report adds its end-to-end speed-up. About 5 minutes more on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from slimdiff.io import read_json, to_jsonable, write_json

MODELS = ("teacher", "pruned", "distilled")
STEP_MODEL = "step-distilled"  # the optional fourth row (DemoConfig.step_distill)
# the report's quality columns (slimdiff.eval.toy): continuous first, then the saturating ones
QUALITY_KEYS = ("alignment_score", "all_correct", "alignment", "kid", "judge_fid", "psnr_to_teacher",
                "feature_cos_to_teacher")


def _eval_key(s: dict) -> dict:
    """The settings an evaluation depends on (a rerun with others redoes it)."""
    return {k: s[k] for k in ("model", "preset", "distill_steps", "batch_size", "learning_rate", "feat_loss",
                              "num_images", "steps", "guidance", "seed", "step_distill", "step_distill_train_steps")}


@dataclasses.dataclass
class DemoConfig:
    out: str = "runs/demo"  # output directory (report.html, report.md, report.json, stages)
    model: str = "toy"  # the teacher pipeline: `toy` or a local pipeline directory of the same kind
    preset: str = "bk-small"  # a slimdiff.unet.presets name
    quick: bool = False  # smaller everything: finishes in ~3 minutes on 2 CPU cores
    distill_steps: int | None = None  # optimiser steps; None: 600 (quick: 100); ~8 min on 2 shared cores
    batch_size: int = 64  # distillation batch (toy latents are 8x8: cheap)
    learning_rate: float = 1e-3  # AdamW; toy-scale (BK-SDM uses 5e-5 at batch 256 on SD)
    feat_loss: str = "normalized"  # LAPTOP-Diff normalized feature KD; "plain" for BK-SDM's
    num_images: int | None = None  # test prompts per model; None: 256 (quick: 32; CIs need N >= 256)
    steps: int | None = None  # sampler steps; None: the toy pipeline's default
    guidance: float | None = None  # classifier-free guidance; None: the toy pipeline's default
    latency_repeats: int | None = None  # timed U-Net forwards per model; None: 20 (quick: 5)
    seed: int = 0  # one seed for pruning-free steps: data order, noise, evaluation prompts and noise
    grid_rows: int = 8  # prompts shown in the report's side-by-side grid
    step_distill: int | None = None  # student sampling steps of the optional step-distillation stage (e.g. 8)
    step_distill_train_steps: int | None = None  # its optimiser steps; None: 400 (quick: 20)

    def __post_init__(self):
        from slimdiff.unet.presets import PRESETS

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

    def resolved(self) -> dict[str, Any]:
        """The settings with every None replaced by the value used."""
        from slimdiff.toy.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS

        d = dataclasses.asdict(self)
        d["distill_steps"] = self.distill_steps or (100 if self.quick else 600)
        d["num_images"] = self.num_images or (32 if self.quick else 256)
        d["steps"] = self.steps or DEFAULT_STEPS
        d["guidance"] = self.guidance if self.guidance is not None else DEFAULT_GUIDANCE
        d["latency_repeats"] = self.latency_repeats or (5 if self.quick else 20)
        d["step_distill_train_steps"] = (self.step_distill_train_steps or (20 if self.quick else 400)
                                         if self.step_distill else None)
        return d

    def step_config(self, teacher_dir: str, out: Path):
        """The step-distillation stage's settings: the distilled student to `step_distill` DDIM steps,
        CFG-aware (p = 0.1), from a teacher DDIM schedule of 16 steps (2N when N > 8), batch 32, AdamW
        1e-4 cosine (bench/bench_steps.py's committed settings). Invalid N: StepDistillConfig's error."""
        from slimdiff.distill.step import StepDistillConfig

        n, s = self.step_distill, self.resolved()
        return StepDistillConfig(
            teacher=self.model, student=teacher_dir, data="toy", out=str(out / "step-distill"), steps=n,
            teacher_steps=16 if n <= 8 else 2 * n, max_steps=s["step_distill_train_steps"], batch_size=32,
            learning_rate=1e-4, lr_scheduler="cosine", lr_warmup_steps=s["step_distill_train_steps"] // 20,
            cfg_prob=0.1, seed=self.seed, cpu=True, cache_dir=str(out / "cache"),
            checkpoint_every=max(20, s["step_distill_train_steps"] // 4),
            resume="latest" if (out / "step-distill" / "checkpoints").is_dir() else None)


def _say(msg: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(msg)


def _gflops(unet, latent: int, context_length: int) -> float:
    """GFLOPs (2 x MACs, attention matmuls included) of one U-Net forward at batch 1."""
    from slimdiff.profile import ProfileSettings, profile_unet

    settings = ProfileSettings(latent_size=latent, context_length=context_length, measure_latency=False)
    return profile_unet(unet, settings).total.flops / 1e9


def run_demo(config: DemoConfig, log: Callable[[str], None] | None = print, progress: bool = True) -> dict:
    """Run the demo; return the `report.json` content. See the module docstring."""
    from slimdiff.distill import DistillConfig, distill
    from slimdiff.eval.latency import pipeline_latency
    from slimdiff.eval.compare import compare
    from slimdiff.eval.compare import write as write_compare
    from slimdiff.profile import ProfileSettings, model_latencies, profile_unet
    from slimdiff.report import plot_bars, plot_loss_curves, write_report
    from slimdiff.unet import apply_preset, load_pipeline, load_unet, save_student, text_width

    s = config.resolved()
    out = Path(config.out)
    step_cfg = config.step_config(str(out / "distill"), out) if config.step_distill else None  # checks N first
    saved = out / "demo_config.json"  # a rerun resumes finished stages: only with the same settings
    if saved.is_file():
        old = read_json(saved)
        differs = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in to_jsonable(s).items()
                   if k != "out" and old.get(k) != v]
        if differs:
            raise ValueError(f"{out} holds a demo run with other settings ({'; '.join(differs)}); its stages would "
                             f"be reused: choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, s)
    t_start = time.perf_counter()

    # 1. the teacher pipeline and its U-Net profile (per block: params, FLOPs, latency)
    pipe = load_pipeline(config.model)
    pipe.set_progress_bar_config(disable=True)
    teacher = pipe.unet.eval()
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latent = teacher.config.sample_size
    context = pipe.tokenizer.model_max_length
    profile_json = out / "profile.json"
    if not profile_json.is_file():
        _say("[1/5] profiling the teacher U-Net", log)
        settings = ProfileSettings(latent_size=latent, vae_scale_factor=vae_factor, context_length=context,
                                   batch=2, repeats=3 if config.quick else 10, seed=config.seed)
        profile_unet(teacher, settings, name=config.model).save_json(profile_json)
    profile = read_json(profile_json)
    plot_bars({b["name"]: b["latency_ms"] for b in profile["blocks"]}, "ms (CFG batch 2)",
              out / "teacher_block_latency.png", title="Teacher U-Net latency per block")

    # 2. prune with the preset (weights inherited from the teacher, recipe written)
    pruned_dir = out / "pruned"
    if not (pruned_dir / "recipe.json").is_file():
        _say(f"[2/5] pruning with preset {config.preset}", log)
        student, info = apply_preset(teacher, config.preset)
        save_student(student, pruned_dir, config.model, {"preset": config.preset, **info})
    pruned = load_unet(pruned_dir).eval()

    # 3. distill (resumes from the last checkpoint when the demo is rerun)
    distill_dir = out / "distill"
    dcfg = DistillConfig(
        teacher=config.model, student=str(pruned_dir), data="toy", out=str(distill_dir),
        max_steps=s["distill_steps"], batch_size=config.batch_size, learning_rate=config.learning_rate,
        lr_scheduler="cosine", lr_warmup_steps=min(50, s["distill_steps"] // 10),
        feat_loss=config.feat_loss, seed=config.seed, checkpoint_every=max(50, s["distill_steps"] // 4),
        resume="latest" if (distill_dir / "checkpoints").is_dir() else None, cpu=True,
        cache_dir=str(out / "cache"),  # exact: VAE latent moments + text embeddings of the 4096 scenes
    )
    if not (distill_dir / "recipe.json").is_file():
        _say(f"[3/5] distilling for {s['distill_steps']} steps", log)
        distill(dcfg, teacher=teacher, student=copy.deepcopy(pruned).train(), pipeline=pipe, progress=progress)
    distilled = load_unet(distill_dir).eval()

    # 3b. optional: step-distill the distilled student to N sampling steps (CFG-aware, SnapFusion)
    step_dir = out / "step-distill"
    if step_cfg is not None and not (step_dir / "pipeline" / "model_index.json").is_file():
        from slimdiff.distill.step import step_distill

        _say(f"[3b/5] step-distilling the student to {config.step_distill} sampling steps "
             f"({s['step_distill_train_steps']} training steps)", log)
        step_distill(step_cfg, progress=progress)
    train_log = [json.loads(line) for line in open(distill_dir / "train_log.jsonl", encoding="utf-8") if line.strip()]
    distill_recipe = read_json(distill_dir / "recipe.json")

    # 4. evaluate the three models on the same prompts and seeds (one paired comparison, CIs)
    unets = {"teacher": teacher, "pruned": pruned, "distilled": distilled}
    step_pipe = None
    if step_cfg is not None:  # its own pipeline: the DDIM (trailing, v) sampler it was trained for
        from slimdiff.eval.runner import default_sampling

        step_pipe = load_pipeline(str(step_dir / "pipeline"))
        step_pipe.set_progress_bar_config(disable=True)
        unets[STEP_MODEL] = step_pipe.unet.eval()
        step_steps, step_guidance = default_sampling(step_pipe)
    compare_json = out / "eval" / "compare.json"
    images_dir = out / "eval" / "images"
    if compare_json.is_file() and read_json(compare_json).get("settings", {}).get("demo") != _eval_key(s):
        compare_json.unlink()  # made with other settings: redo
    if not compare_json.is_file() or not images_dir.is_dir():
        _say(f"[4/5] evaluating {', '.join(unets)} on {s['num_images']} test prompts", log)
        pipes = [load_pipeline(config.model, unet=u) for n, u in unets.items() if n != STEP_MODEL]
        steps, scales = [s["steps"]] * len(pipes), [s["guidance"]] * len(pipes)
        if step_pipe is not None:  # sampled as its recipe says
            pipes, steps, scales = pipes + [step_pipe], steps + [step_steps], scales + [step_guidance]
        comparison = compare(pipes, names=list(unets), num_images=s["num_images"], steps=steps,
                             guidance=scales, seed=config.seed, progress=progress,
                             keep_images=config.grid_rows)
        comparison["settings"]["demo"] = _eval_key(s)
        for name, ims in comparison["images"].items():
            (images_dir / name).mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(ims):
                im.save(images_dir / name / f"{i:03d}.png")
        write_compare(comparison, compare_json, out / "eval" / "compare.md")
    comparison = read_json(compare_json)
    from PIL import Image

    images = {name: [Image.open(p).copy() for p in sorted((images_dir / name).glob("*.png"))] for name in unets}
    results = {row["model"]: row for row in comparison["rows"]}
    prompts = comparison.get("prompts", [])[: config.grid_rows]

    _say("[5/5] measuring latency and writing the report", log)
    # one CFG step (batch 2) per model, timed round-robin so the machine's load hits all alike
    unet_ms = model_latencies(unets, latent, text_width(teacher), batch=2, context_length=context,
                              warmup=1, repeats=s["latency_repeats"])
    e2e_ms = {}
    for name, unet in unets.items():
        if name == STEP_MODEL:
            e2e_ms[name] = pipeline_latency(step_pipe, steps=step_steps, guidance=step_guidance,
                                            repeats=3 if config.quick else 5)
            continue
        pipe.unet = unet
        e2e_ms[name] = pipeline_latency(pipe, steps=s["steps"], guidance=s["guidance"],
                                        repeats=3 if config.quick else 5)
    pipe.unet = teacher

    # 5. report: quality with 95% CIs (paired with the teacher), size and speed
    per_model = {}
    for name, unet in unets.items():
        r = results[name]
        per_model[name] = {
            **{k: r.get(k) for k in QUALITY_KEYS},
            "ci": {k: r["ci"][k] for k in QUALITY_KEYS if k in r.get("ci", {})},
            "differs_from_teacher": sorted(r.get("marks", {})),
            "params": unet.num_parameters(),
            "gflops": _gflops(unet, latent, context),
            "unet_latency_ms": unet_ms[name],
            "pipeline_latency_ms": e2e_ms[name],
        }
    t = per_model["teacher"]
    for name, m in per_model.items():
        m["params_ratio"] = m["params"] / t["params"]
        m["unet_speedup"] = t["unet_latency_ms"] / m["unet_latency_ms"]
        m["pipeline_speedup"] = t["pipeline_latency_ms"] / m["pipeline_latency_ms"]
        m["all_correct_recovered"] = m["all_correct"] / t["all_correct"] if t["all_correct"] else None
    summary = {
        **per_model,
        "settings": s,
        "distill": {"steps": distill_recipe.get("distill", {}).get("steps", s["distill_steps"]),
                    "steps_per_sec": distill_recipe.get("distill", {}).get("steps_per_sec")},
        "threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_start,
    }
    from slimdiff.report.tables import format_ci

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
    plots = {
        "U-Net latency per model (ms, one CFG step)": plot_bars(unet_ms, "ms", out / "unet_latency.png"),
        "Teacher U-Net latency per block": out / "teacher_block_latency.png",
    }
    loss_png = distill_dir / "loss_curves.png"
    plots["Distillation loss curves"] = plot_loss_curves(train_log, out / "loss_curves.png") if train_log else loss_png
    write_json(out / "report.json", summary)
    html_path, md_path = write_report(
        out, f"slimdiff demo: {config.preset} on the {config.model} world", rows,
        images=images, prompts=prompts, plots=plots,
        extra_sections={
            "Settings": json.dumps(s, indent=2),
            "Teacher profile per block": [{k: b[k] for k in ("name", "params", "flops", "latency_ms",
                                                             "latency_share")} for b in profile["blocks"]],
        },
        intro=(f"Teacher `{config.model}`, student pruned with `{config.preset}` and distilled for "
               f"{s['distill_steps']} steps; {s['num_images']} test prompts per model, {s['steps']} sampler "
               f"steps, guidance {s['guidance']}, seed {config.seed}, the same initial noise for every model. "
               f"Quality: value [95% bootstrap CI over the prompts]; `*`: differs from the teacher (the "
               f"paired difference's 95% CI excludes 0). Fidelity: PSNR and judge-feature cosine of each "
               f"image against the teacher's for the same prompt and noise. Latency: median over repeats on "
               f"{torch.get_num_threads()} CPU threads, U-Net timed round-robin in one run."
               + (f" `{STEP_MODEL}`: the distilled student step-distilled (CFG-aware) to {step_steps} DDIM steps "
                  f"for {s['step_distill_train_steps']} training steps, sampled with its own {step_steps} steps "
                  f"and guidance {step_guidance}; its pipeline speed-up is end to end (text encoder, every U-Net "
                  f"call, VAE decoder) against the teacher at {s['steps']} steps." if step_pipe is not None else "")),
    )
    summary["report_html"], summary["report_md"] = str(html_path), str(md_path)
    write_json(out / "report.json", summary)
    _say(f"report: {html_path}", log)
    return summary
