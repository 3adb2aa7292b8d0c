"""PyTorch twin of bench/engine.ts: float32 matmul GFLOP/s and ms per fwd+bwd+clip+AdamW step of
the micro transformer (a one-block TARFlow: 16 tokens of dim 4, width 128, 4 layers, 4 heads of 32,
MLP x4, batch 64, no classes). One thread. Prints one JSON line on stdout (the shape
bench/engine.ts reads).

The model is bench/torch/tarflow_train.py's TarFlow (the twin bench/train.ts uses) with one block;
like the jax-js side of bench/engine.ts, this step has no EMA.
"""
import argparse
import json
import statistics
import time

import torch

from tarflow_train import TarFlow


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def bench_matmul(sizes, warmup, reps):
    out = []
    gen = torch.Generator().manual_seed(0)
    for n, r in zip(sizes, reps):
        a = torch.rand(n, n, generator=gen) * 2 - 1
        b = torch.rand(n, n, generator=gen) * 2 - 1
        for _ in range(warmup):
            torch.matmul(a, b)
        samples = []
        for _ in range(r):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            samples.append(ms_since(t0))
        med = statistics.median(samples)
        out.append({"n": n, "warmup": warmup, "samplesMs": samples, "medianMs": med, "gflops": 2 * n**3 / (med * 1e6)})
    return out


def bench_step(batch, warmup, steps):
    torch.manual_seed(0)
    model = TarFlow(in_channels=1, img_size=8, patch=2, width=128, blocks=1, layers=4, head_dim=32, mlp_ratio=4, num_classes=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4)
    x = torch.randn(batch, 1, 8, 8)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return ms_since(t0), loss.item()

    first_ms, loss_first = step()
    for _ in range(warmup - 1):
        step()
    samples, loss_last = [], float("nan")
    for _ in range(steps):
        ms, loss_last = step()
        samples.append(ms)
    return {
        "batch": batch,
        "tokens": 16,
        "params": sum(p.numel() for p in model.parameters()),
        "firstCallMs": first_ms,
        "warmup": warmup,
        "samplesMs": samples,
        "medianMs": statistics.median(samples),
        "lossFirst": loss_first,
        "lossLast": loss_last,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--mm-warmup", type=int, default=2)
    ap.add_argument("--mm-reps", default="30,12,5")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = [int(s) for s in args.mm_reps.split(",")]
    result = {
        "kind": "torch",
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "matmul": bench_matmul(sizes, args.mm_warmup, reps),
        "step": bench_step(args.batch, args.warmup, args.steps),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
