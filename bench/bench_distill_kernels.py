"""Where a toy distillation step's compute goes: student forward+backward+AdamW and teacher forward.

    python bench/bench_distill_kernels.py loop        # for-loop AdamW, contiguous, teacher under inference_mode
    python bench/bench_distill_kernels.py foreach     # foreach AdamW
    python bench/bench_distill_kernels.py cl          # foreach AdamW + channels-last weights and input
    python bench/bench_distill_kernels.py compile     # foreach AdamW + torch.compile (inductor): minutes to compile

Toy teacher -> `bk-small` at batch 64 (the demo's), random inputs; prints the median ms of 5
repeats after one warm-up call. One mode per process, so run the modes back to back.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["loop", "foreach", "cl", "compile"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    import torch

    from slimdiff.unet import apply_preset
    from slimdiff.sample import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy")
    teacher = pipe.unet.eval().requires_grad_(False)
    student = apply_preset(teacher, "bk-small")[0].train()
    g = torch.Generator().manual_seed(0)
    b, c, h = args.batch_size, teacher.config.in_channels, teacher.config.sample_size
    x = torch.randn(b, c, h, h, generator=g)  # latents (b, C, h, w)
    t = torch.randint(0, 1000, (b,), generator=g)
    text = torch.randn(b, 24, teacher.config.cross_attention_dim, generator=g)  # (b, L, D)
    if args.mode == "cl":
        for m in (student, teacher):
            m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, foreach=args.mode != "loop")
    if args.mode == "compile":
        student.compile()
        teacher.compile()

    def student_step():
        student(x, t, encoder_hidden_states=text).sample.pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.inference_mode():
            teacher(x, t, encoder_hidden_states=text)

    t0 = time.perf_counter()
    student_step(), teacher_forward()
    first = time.perf_counter() - t0
    times = {"student fwd+bwd+AdamW": [], "teacher forward": []}
    for _ in range(5):
        for name, fn in zip(times, (student_step, teacher_forward)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    medians = ", ".join(f"{k} {1000 * statistics.median(v):.0f} ms" for k, v in times.items())
    print(f"{args.mode}: {medians}; first call {first:.1f} s; {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
