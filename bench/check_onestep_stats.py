"""Per-channel latent statistics of a one-step generator against the data and the teacher's DDIM pairs
(issue 21 audit, session 9; `docs/bench/onestep.md`).

    PYTHONPATH=src python bench/check_onestep_stats.py RUN [PAIRS]   # PAIRS: a dmd teacher-pairs file

RUN's 1-step latents from the first 256 pairs' noise and captions (w = 5), the data latents of those items, the
pairs' teacher latents: per-channel mean and std, and the generator's MSE to the pairs.
"""
import sys

import torch
from safetensors.torch import load_file
from slimdiff.distill.onestep import OneStepConfig, OneStepTrainer
p = load_file(sys.argv[2] if len(sys.argv) > 2 else "runs/pairs16-1024.safetensors")
print("teacher DDIM16 latents: mean", p["latents"].mean((0, 2, 3)).tolist(), "std", p["latents"].std((0, 2, 3)).tolist())
cfg = OneStepConfig(teacher="toy", student=sys.argv[1], out="runs/check/o4", max_steps=1, batch_size=4, cache_dir="runs/cache", checkpoint_every=0)
tr = OneStepTrainer(cfg, progress=False)
idx = p["index"][:256].tolist()
text = tr._item_text(idx)
with torch.no_grad():
    x = tr._generate(tr.model, p["noise"][:256], tr.timesteps[:1].expand(256), text, torch.full((256,), 5.0))
    lat = tr.data.sample([tr.dataset[i] for i in idx], 0)[0]
print("data latents: mean", lat.mean((0, 2, 3)).tolist(), "std", lat.std((0, 2, 3)).tolist())
print("generator: mean", x.mean((0, 2, 3)).tolist(), "std", x.std((0, 2, 3)).tolist())
print("mse gen vs pair", ((x - p["latents"][:256]) ** 2).mean().item(), "pair vs data", ((lat - p["latents"][:256]) ** 2).mean().item())
tr.close()
