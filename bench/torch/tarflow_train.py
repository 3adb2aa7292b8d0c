"""PyTorch twin of a TARFlow training step (src/models/tarflow.ts + src/train/trainer.ts), for
bench/train.ts, and the model bench/torch/micro_step.py times for bench/engine.ts.

Written from the model's semantics, not ported:
  patchify (features c*p^2 + ki*p + kj) -> per block: tokens in raster order (even blocks) or
  reversed with a reversed position table (odd blocks) -> Linear in + learned positions + class
  embedding on every token (label -1 = the mean embedding) -> pre-LN layers (LayerNorm eps 1e-5;
  attention qkv -> heads of head_dim, causal, proj; MLP Linear -> exact GELU -> Linear) ->
  Linear out -> (a, b) shifted one token (token 0 gets a = b = 0) -> z = (x - b) * exp(-a),
  logdet = -mean(a). Loss = 0.5 * mean(z^2) - mean(sum over blocks of logdet).
One step = forward + backward + clip_grad_norm_(1.0) + AdamW (+ an EMA of the weights with
torch._foreach ops under no_grad, as our jitted step does). Plain matmul attention (torch 1.13).

CLI (bench/train.ts): --file F reads a safetensors file written by the jax-js side: our parameter
names ("blocks.0.layers.1.attn.qkv.w", Linear weights stored [in, out]), the batch "x" [B, C, H, W]
and labels "y" [B], and the model config as JSON in the metadata. Prints one JSON line.

--reference-dir D --reference-weights F: time apple/ml-tarflow's own Model instead of the twin,
imported from a checkout at D (the user's; nothing of it is copied here) and loaded strictly from F,
the same weights under the reference's names (written by bench/train.ts with the project's
exporter). Torch 1.13 has no scaled_dot_product_attention, so the reference's own einsum attention
path (Attention.USE_SPDA = False) runs.
"""
import argparse
import json
import math
import statistics
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def layers_per_block(cfg: dict) -> int:
    """The config's layers per block: a list since STARFlow's per-block depths; the twin needs one depth."""
    layers = cfg["layersPerBlock"]
    if isinstance(layers, list):
        if len(set(layers)) != 1:
            raise SystemExit(f"the PyTorch twin needs the same depth in every block, got {layers}")
        return layers[0]
    return layers


# ---- the model ----


class Layer(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.attn_norm = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * inner)
        self.proj = nn.Linear(inner, width)
        self.mlp_norm = nn.LayerNorm(width, eps=1e-5)
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


class Block(nn.Module):
    def __init__(self, tokens, token_dim, width, layers, heads, head_dim, mlp_ratio, num_classes, flipped):
        super().__init__()
        self.flipped = flipped
        self.token_dim = token_dim
        self.pos = nn.Parameter(torch.randn(tokens, width) * 0.01)
        self.class_embed = nn.Parameter(torch.randn(num_classes, width) * 0.01) if num_classes > 0 else None
        self.proj_in = nn.Linear(token_dim, width)
        self.layers = nn.ModuleList(Layer(width, heads, head_dim, mlp_ratio) for _ in range(layers))
        self.proj_out = nn.Linear(width, 2 * token_dim)
        # The model zero-initialises this; random weights make the backward pass do real work.
        nn.init.normal_(self.proj_out.weight, std=0.01)
        self.register_buffer("mask", torch.ones(tokens, tokens, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor, y):
        pos = self.pos
        if self.flipped:
            x, pos = x.flip(1), pos.flip(0)  # position embeddings stay tied to their patches
        h = self.proj_in(x) + pos
        if self.class_embed is not None:
            table = self.class_embed
            cls = torch.where((y < 0)[:, None], table.mean(0, keepdim=True), table[y.clamp(min=0)])
            h = h + cls[:, None, :]
        for layer in self.layers:
            h = layer(h, self.mask)
        out = self.proj_out(h)
        # token t gets its affine parameters from tokens < t; token 0 gets a = b = 0
        shifted = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        a, b = shifted[..., : self.token_dim], shifted[..., self.token_dim :]
        z = (x - b) * torch.exp(-a)
        if self.flipped:
            z = z.flip(1)
        return z, -a.mean(dim=(1, 2))


class TarFlow(nn.Module):
    def __init__(self, in_channels=1, img_size=8, patch=2, width=128, blocks=1, layers=4, head_dim=32, mlp_ratio=4, num_classes=0):
        super().__init__()
        self.patch = patch
        tokens = (img_size // patch) ** 2
        token_dim = in_channels * patch * patch
        heads = width // head_dim
        self.blocks = nn.ModuleList(
            Block(tokens, token_dim, width, layers, heads, head_dim, mlp_ratio, num_classes, flipped=i % 2 == 1) for i in range(blocks)
        )

    @staticmethod
    def from_config(cfg: dict) -> "TarFlow":
        return TarFlow(
            in_channels=cfg["inChannels"], img_size=cfg["imgSize"], patch=cfg["patchSize"], width=cfg["width"],
            blocks=cfg["numBlocks"], layers=layers_per_block(cfg), head_dim=cfg["headDim"], mlp_ratio=cfg["mlpRatio"],
            num_classes=cfg["numClasses"],
        )

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.patch
        x = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (hh // p) * (ww // p), c * p * p)

    def flow(self, images: torch.Tensor, y=None):
        """x -> (z [B, T, D], per-image sum over blocks of the mean log-determinant [B])."""
        z = self.patchify(images)
        logdet = 0
        for block in self.blocks:
            z, ld = block(z, y)
            logdet = logdet + ld
        return z, logdet

    def loss(self, images: torch.Tensor, y=None) -> torch.Tensor:
        z, logdet = self.flow(images, y)
        return 0.5 * z.pow(2).mean() - logdet.mean()

    def bits_per_dim(self, images: torch.Tensor, y=None) -> torch.Tensor:
        """Per image, as the reference's evaluate_bpd: Gaussian log-density with log 2π, log 128 bins."""
        z, logdet = self.flow(images, y)
        logp = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).mean(dim=(1, 2)) - math.log(128)
        return (-logp - logdet) / math.log(2)

    # ---- our parameter names ([in, out] Linear weights) ----

    def load_ours(self, tensors: dict) -> None:
        def lin(mod: nn.Linear, name: str):
            mod.weight.copy_(tensors[f"{name}.w"].t())
            mod.bias.copy_(tensors[f"{name}.b"])

        def norm(mod: nn.LayerNorm, name: str):
            mod.weight.copy_(tensors[f"{name}.g"])
            mod.bias.copy_(tensors[f"{name}.b"])

        used = 0
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                p = f"blocks.{i}"
                blk.pos.copy_(tensors[f"{p}.pos"])
                used += 1
                if blk.class_embed is not None:
                    blk.class_embed.copy_(tensors[f"{p}.classEmbed"])
                    used += 1
                lin(blk.proj_in, f"{p}.projIn")
                lin(blk.proj_out, f"{p}.projOut")
                used += 4
                for j, layer in enumerate(blk.layers):
                    q = f"{p}.layers.{j}"
                    norm(layer.attn_norm, f"{q}.attnNorm")
                    lin(layer.qkv, f"{q}.attn.qkv")
                    lin(layer.proj, f"{q}.attn.proj")
                    norm(layer.mlp_norm, f"{q}.mlpNorm")
                    lin(layer.fc1, f"{q}.mlp.fc1")
                    lin(layer.fc2, f"{q}.mlp.fc2")
                    used += 12
        expected = sum(1 for k in tensors if k.startswith("blocks."))
        if used != expected:
            raise ValueError(f"loaded {used} parameter tensors but the file has {expected}")


# ---- safetensors (a small reader: header length, JSON header, little-endian data) ----

_DTYPES = {"F32": np.float32, "I32": np.int32, "I64": np.int64, "F64": np.float64}


def read_safetensors(path: str):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        arr = np.frombuffer(raw[base + begin : base + end], dtype=np.dtype(_DTYPES[e["dtype"]]).newbyteorder("<"))
        out[name] = torch.from_numpy(arr.reshape(e["shape"]).copy())
    return out, meta


# ---- the training step ----


class Reference(nn.Module):
    """apple/ml-tarflow's Model behind the twin's loss / bits_per_dim interface."""

    def __init__(self, reference_dir: str, cfg: dict, weights: dict):
        super().__init__()
        import sys

        sys.path.insert(0, reference_dir)
        import transformer_flow  # the reference's own model file

        transformer_flow.Attention.USE_SPDA = False
        self.model = transformer_flow.Model(
            in_channels=cfg["inChannels"], img_size=cfg["imgSize"], patch_size=cfg["patchSize"], channels=cfg["width"],
            num_blocks=cfg["numBlocks"], layers_per_block=layers_per_block(cfg), num_classes=cfg["numClasses"],
        )
        self.model.load_state_dict(weights, strict=True)

    def loss(self, images: torch.Tensor, y=None) -> torch.Tensor:
        z, _, logdets = self.model(images, y)
        return self.model.get_loss(z, logdets)

    def bits_per_dim(self, images: torch.Tensor, y=None) -> torch.Tensor:
        z, _, logdet = self.model(images, y)
        logp = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).mean(dim=(1, 2)) - math.log(128)
        return (-logp - logdet) / math.log(2)


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def make_step(model: TarFlow, lr: float, weight_decay: float, clip: float, ema_decay: float):
    """fwd + bwd + clip + AdamW (+ EMA when ema_decay > 0); returns step() -> (ms, loss, grad_norm)."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    ema = [p.detach().clone() for p in params] if ema_decay > 0 else None

    def step(x, y):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_mul_(ema, ema_decay)
                torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - ema_decay)
        # Reported as the project's trainer reports it: nats per dimension with the Gaussian's
        # 0.5 log 2π (a constant: the gradient and the timing are the same).
        value = loss.item() + HALF_LOG_2PI
        return (time.perf_counter() - t0) * 1e3, value, float(norm)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True, help="safetensors from bench/train.ts: weights, x, y, config in metadata")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nll-reps", type=int, default=0, help="then time this many bits/dim forward passes (no grad)")
    ap.add_argument("--reference-dir", help="an apple/ml-tarflow checkout: time its Model instead of the twin")
    ap.add_argument("--reference-weights", help="the same weights under the reference's names (safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tensors, meta = read_safetensors(args.file)
    cfg = json.loads(meta["config"])
    if args.reference_dir:
        model = Reference(args.reference_dir, cfg, read_safetensors(args.reference_weights)[0])
    else:
        model = TarFlow.from_config(cfg)
        model.load_ours(tensors)
    x = tensors["x"].float()
    y = tensors["y"].long() if cfg["numClasses"] > 0 else None
    step = make_step(model, args.lr, args.weight_decay, args.clip, args.ema_decay)

    losses, norms = [], []
    first_ms, loss, norm = step(x, y)
    losses.append(loss)
    norms.append(norm)
    for _ in range(args.warmup):
        _, loss, norm = step(x, y)
        losses.append(loss)
        norms.append(norm)
    samples = []
    for _ in range(args.steps):
        ms, loss, norm = step(x, y)
        samples.append(ms)
        losses.append(loss)
        norms.append(norm)
    nll_ms, bpd = [], []
    if args.nll_reps > 0:
        with torch.no_grad():
            bpd = model.bits_per_dim(x, y).tolist()  # also the untimed first call
            for _ in range(args.nll_reps):
                t0 = time.perf_counter()
                model.bits_per_dim(x, y).sum().item()
                nll_ms.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "kind": "torch",
        "model": "ml-tarflow" if args.reference_dir else "twin",
        "nllMs": nll_ms,
        "bpd": bpd,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "firstCallMs": first_ms,
        "samplesMs": samples,
        "medianMs": statistics.median(samples),
        "losses": losses,
        "gradNorms": norms,
        "ema": args.ema_decay > 0,
    }))


if __name__ == "__main__":
    main()
