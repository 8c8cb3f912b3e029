"""Does updating DMD2's fake score on the generator's samples x just before reading the DMD gradient at x bias that
gradient toward x? (issue 21 audit, session 9; `docs/bench/onestep.md`)

    PYTHONPATH=src python bench/check_onestep_order.py      # needs /work/main/runs/bench_steps/lcm and runs/cache

Two batches A, B of 32 one-step samples of the toy LCM student; the DMD gradient at fixed (t, eps) before and after
3 fake-score updates (lr 1e-4) on A; "moved toward x": the projection of the fake x0's change on (x - x0_fake)
relative to |x - x0_fake|^2, on A (updated) and B (fresh). At the teacher-initialised fake score and after 30
warm-up updates on other generator batches.
"""
import sys

import torch
from slimdiff.distill.dmd import dmd_gradient
from slimdiff.distill.onestep import OneStepConfig, OneStepTrainer
from slimdiff.distill.guidance import guided_output
from slimdiff.train.maths import alpha_sigma, to_x0_eps, embed_dim
torch.manual_seed(0)
cfg = OneStepConfig(teacher="toy", student=sys.argv[1] if len(sys.argv) > 1 else "/work/main/runs/bench_steps/lcm", out="runs/check/o2", max_steps=1,
                    batch_size=32, cache_dir="runs/cache", checkpoint_every=0, fake_learning_rate=1e-4, fake_ratio=3)
tr = OneStepTrainer(cfg, progress=False)
items = [tr.dataset[i] for i in range(64)]
def batch(lo, pos):
    lat, noise, text, _, g, rows = tr.data.sample(items[lo:lo + 32], pos)
    w = torch.full((32,), 5.0)
    with torch.no_grad():
        x = tr._generate(tr.model, noise, tr.timesteps[:1].expand(32), text, w)
    t = torch.randint(20, 980, (32,), generator=g); eps = torch.randn(x.shape, generator=g)
    return lat, x, text, w, t, eps, g, rows
def grad(x, text, w, t, eps):
    a, s = alpha_sigma(tr.alphas_cumprod[t]); x_t = a * x + s * eps
    with torch.no_grad():
        out, _ = guided_output(tr.teacher, x_t, t, text, tr.empty_text, w, None)
        real = to_x0_eps(tr.teacher_pred, x_t, out, a, s)[0]
        fake = tr._x0(tr.fake, x_t, t, text, w)
    return dmd_gradient(x, real, fake), fake
A = batch(0, 0); B = batch(32, 1)
def report(tag, warm):
    ga0, fa0 = grad(A[1], *A[2:6]); gb0, fb0 = grad(B[1], *B[2:6])
    for _ in range(3):
        tr._fake_update(A[1], A[0], A[2], A[3], A[6], A[7])
    ga1, fa1 = grad(A[1], *A[2:6]); gb1, fb1 = grad(B[1], *B[2:6])
    rel = lambda g0, g1: ((g1 - g0).norm() / g0.norm()).item()
    # does the fake x0 move toward x itself?
    toward = lambda x, f0, f1: ((f1 - f0) * (x - f0)).sum().item() / ((x - f0).norm() ** 2).item()
    print(f"{tag}: |g|={ga0.norm():.2f}; grad change on the updated batch {rel(ga0, ga1):.3f}, on a fresh batch "
          f"{rel(gb0, gb1):.3f}; fake x0 moved toward x: updated {toward(A[1], fa0, fa1):.4f} fresh {toward(B[1], fb0, fb1):.4f}")
report("init", 0)
# warm the fake score on 30 other generator batches, then again
for k in range(30):
    C = batch(0 if k % 2 else 32, 10 + k)
    tr._fake_update(C[1], C[0], C[2], C[3], C[6], C[7])
A = batch(0, 100); B = batch(32, 101)
report("after 30 updates", 1)
tr.close()
