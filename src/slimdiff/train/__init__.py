"""slimdiff.train: the training core every trainer runs on. It names no plug-in and no world.

    config.py    TrainConfig: the settings every trainer shares (optimisation, bookkeeping,
                 perceptual term), validated when built; `resume_mismatches` for exact resume
    loop.py      Trainer: the one loop on accelerate (batches as functions of (seed, step),
                 accumulation, clipping, LR schedule, EMA, JSONL log, progress bar, non-finite
                 stop, checkpoints, --profile-steps, loss plot)
    checkpoint.py  atomic checkpoints without pickles, exact resume, the JSONL log
    batches.py   LatentBatches: text-image data, latent/text cache, each micro-batch's randomness
    parts.py     load and check teacher / student / pipeline parts; save out/pipeline; precompute the cache
    maths.py     x0 / eps / v conversions, DDIM steps and trailing schedules, w-conditioning
    speed.py     speed options (inference-mode teacher, autocast, compile, channels-last, AdamW) and the profile
    ema.py       the project's one EMA

A method trainer is one file that subclasses `Trainer` (or a method trainer) and says what one
step computes. The methods: `slimdiff.distill.kd.KdTrainer` (knowledge distillation),
`slimdiff.distill.step.StepTrainer(KdTrainer)` (step distillation), `slimdiff.vae.distill.VaeTrainer`
(decoder distillation).

A new distiller, e.g. a latent consistency distiller (LCM, Luo et al. 2023), is one file
`distill/lcm.py`:
    @dataclass class LcmConfig(DistillConfig): its settings (skipping step k, w range, Huber c),
        `_check_loss_weights` overridden, validated in `__post_init__`
    class LcmTrainer(KdTrainer):             the set-up (models, data, cache, resume) is KdTrainer's
        _prepare_student(student)            add the w embedding (`step.add_guidance_embedding`)
        _guidance_dim()                      None: the step feeds w itself
        _micro_step(items, position)         `self.data.sample(...)`; the teacher's DDIM solver step
                                             over `maths.step_paths` (x0/eps via `maths.to_x0_eps`);
                                             the target network's and the student's consistency
                                             outputs; return {"loss": ...}
        _on_step_start(step)                 update the target network (an `EMA` of the student)
        _recipe(losses, sps)                 add its entry and `sampling` (steps, guidance)
    and a CLI file `cli/lcm.py` whose flags are `cli.distill.OPTIONS` plus its own.
"""

from slimdiff.train.config import TrainConfig

__all__ = ["TrainConfig"]
