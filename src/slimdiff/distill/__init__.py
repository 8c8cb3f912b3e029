"""slimdiff.distill: knowledge distillation of a teacher U-Net into a (pruned) student.

    from slimdiff.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="toy", student="runs/bk-small", data="toy", out="runs/kd"))

Losses (`losses`), feature hooks and the block map (`features`), stochastic depth
(`stochastic_depth`), perceptual networks (`perceptual`), EMA (`ema`), checkpoints
(`checkpoint`), the loop (`trainer`). `distill` is imported lazily (it pulls in accelerate).
"""

from slimdiff.distill.config import DistillConfig

__all__ = ["DistillConfig", "distill", "DistillResult"]


def __getattr__(name):
    if name in ("distill", "DistillResult"):
        from slimdiff.distill import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'slimdiff.distill' has no attribute {name!r}")
