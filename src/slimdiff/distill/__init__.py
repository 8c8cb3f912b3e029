"""slimdiff.distill: method trainers on the training core (`slimdiff.train`).

    from slimdiff.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="toy", student="runs/bk-small", data="toy", out="runs/kd"))

`kd`: knowledge distillation (task / output / feature / normalized KD, A-SDM SAS, incubation);
`step`: SnapFusion's CFG-aware step distillation. Their pieces: losses (`losses`), feature hooks
and the block map (`features`), stochastic depth (`stochastic_depth`), perceptual networks
(`perceptual`). `distill` is imported lazily (it pulls in accelerate).
"""

from slimdiff.distill.config import DistillConfig

__all__ = ["DistillConfig", "distill", "DistillResult"]


def __getattr__(name):
    if name in ("distill", "DistillResult"):
        from slimdiff.distill import kd

        return getattr(kd, name)
    raise AttributeError(f"module 'slimdiff.distill' has no attribute {name!r}")
