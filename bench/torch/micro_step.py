"""PyTorch twin of bench/engine.ts: float32 matmul GFLOP/s and ms per fwd+bwd+clip+AdamW step of
the micro transformer (a one-block TARFlow: 16 tokens of dim 4, width 128, 4 layers, 4 heads of 32,
MLP x4, batch 64). One thread. Prints one JSON line on stdout (the shape bench/engine.ts reads).

Written from the model's semantics, not ported: patch tokens -> Linear(4->128) + learned positions
-> 4 pre-LN layers -> Linear(128->8) -> shift one token -> z = (x - b) * exp(-a),
loss = 0.5 * mean(z^2) + mean(a). Plain matmul attention (torch 1.13 has no fused SDPA).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Layer(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * inner)
        self.proj = nn.Linear(inner, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = h.shape
        # features ordered [q heads | k heads | v heads]
        qkv = self.qkv(self.attn_norm(h)).reshape(bsz, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, T, d]
        logits = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        probs = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, t, self.heads * self.head_dim)
        h = h + self.proj(o)
        return h + self.fc2(F.gelu(self.fc1(self.mlp_norm(h))))  # exact (erf) GELU


class MicroFlow(nn.Module):
    def __init__(self, tokens=16, token_dim=4, width=128, layers=4, heads=4, head_dim=32, mlp_ratio=4, patch=2):
        super().__init__()
        self.patch, self.token_dim = patch, token_dim
        self.proj_in = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(tokens, width) * 0.01)
        self.layers = nn.ModuleList(Layer(width, heads, head_dim, mlp_ratio) for _ in range(layers))
        self.proj_out = nn.Linear(width, 2 * token_dim)
        # The model zero-initialises this; random weights make the backward pass do real work.
        nn.init.normal_(self.proj_out.weight, std=0.01)
        self.register_buffer("mask", torch.ones(tokens, tokens, dtype=torch.bool).tril())

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.patch
        x = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (hh // p) * (ww // p), c * p * p)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patchify(images)
        h = self.proj_in(x) + self.pos
        for layer in self.layers:
            h = layer(h, self.mask)
        out = self.proj_out(h)
        # token t gets its affine parameters from tokens < t; token 0 gets a = b = 0
        shifted = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        a, b = shifted[..., : self.token_dim], shifted[..., self.token_dim :]
        z = (x - b) * torch.exp(-a)
        logdet = -a.mean(dim=(1, 2))
        return 0.5 * z.pow(2).mean() - logdet.mean()


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
    model = MicroFlow()
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
