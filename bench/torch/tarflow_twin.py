"""PyTorch twin of the reference (ml-tarflow) sequential, KV-cached TARFlow sampler.

It loads a starflow-ts model directory (config.json + model.safetensors, weights stored
[in, out] under our names), reads noise tokens and labels from a safetensors file written by
bench/sampling.ts, samples with the reference's algorithm, writes the images to safetensors and
prints one JSON line of timings. Used by `npm run bench -- sampling`.

Semantics (ml-tarflow's MetaBlock.reverse with its KV cache):
- blocks run from the last to the first; odd blocks reverse the token order and their position
  table; x[0] = z[0]; for i in 0..T-2 token i (+ pos[i] + class embedding) goes through the
  layers with a cache of the keys/values so far, giving (a, b) for token i+1, and
  x[i+1] = z[i+1] * exp(a) + b;
- guidance: a second branch with label -1 (the mean class embedding) and attention temperature
  `attn_temp` (the only difference for unconditional models), with its own cache; the two
  branches run as one doubled batch, as the reference does; a <- a + w(a - a_u), b <- b + w(b - b_u);
- unpatchify: features ordered c*p^2 + ki*p + kj.
"""
import argparse
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

from tarflow_train import layers_per_block

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """8-byte little-endian header length, a JSON header, then the raw data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf8"))
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {e['dtype']}")
        lo, hi = e["data_offsets"]
        arr = np.frombuffer(raw[base + lo : base + hi], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        out[name] = arr.copy()
    return out


def write_safetensors(path, tensors):
    header, chunks, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}[arr.dtype]
        b = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header).encode("utf8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


class Twin:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: torch.from_numpy(v) for k, v in w.items()}
        c = self.cfg
        self.p = c["patchSize"]
        self.side = c["imgSize"] // self.p
        self.T = self.side * self.side
        self.D = c["inChannels"] * self.p * self.p
        self.width = c["width"]
        self.head_dim = c.get("headDim", 64)
        self.heads = self.width // self.head_dim
        self.nblocks = c["numBlocks"]
        self.nlayers = layers_per_block(c)
        self.ncls = c.get("numClasses", 0)
        self.nvp = c.get("nvp", True)

    def W(self, name):
        return self.w[name]

    def lin(self, x, name):
        y = x @ self.W(name + ".w")
        b = self.w.get(name + ".b")
        return y + b if b is not None else y

    def norm(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.W(name + ".g"), self.w.get(name + ".b"), eps=1e-5)

    def class_bias(self, bi, labels):
        """[R, 1, C]; label -1 = the mean class embedding."""
        table = self.W(f"blocks.{bi}.classEmbed")
        mean = table.mean(0, keepdim=True)
        rows = torch.where((labels >= 0)[:, None], table[labels.clamp(min=0)], mean)
        return rows[:, None, :]

    def step(self, bi, u, i, pos, cls, cache, temps):
        """Token i of rows u [R, 1, D] → (a, b) for token i+1; appends to the cache."""
        pre = f"blocks.{bi}"
        h = self.lin(u, pre + ".projIn") + pos[i]
        if cls is not None:
            h = h + cls
        r = u.shape[0]
        for l in range(self.nlayers):
            lp = f"{pre}.layers.{l}"
            qkv = self.lin(self.norm(h, lp + ".attnNorm"), lp + ".attn.qkv").reshape(r, 1, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [R, H, 1, d] each
            ks, vs = cache[l]
            ks.append(k)
            vs.append(v)
            kk = torch.cat(ks, 2)
            vv = torch.cat(vs, 2)
            logits = (q @ kk.transpose(-1, -2)) / math.sqrt(self.head_dim) / temps
            att = torch.softmax(logits, -1) @ vv  # causal: the cache holds tokens <= i only
            att = att.permute(0, 2, 1, 3).reshape(r, 1, self.width)
            h = h + self.lin(att, lp + ".attn.proj")
            h = h + self.lin(F.gelu(self.lin(self.norm(h, lp + ".mlpNorm"), lp + ".mlp.fc1")), lp + ".mlp.fc2")
        out = self.lin(h, pre + ".projOut")
        a, b = out[..., : self.D], out[..., self.D :]
        if not self.nvp:
            a = torch.zeros_like(a)
        return a, b

    def invert_block(self, bi, z, labels, guided, weight, attn_temp):
        B = z.shape[0]
        flipped = bi % 2 == 1
        zm = z.flip(1) if flipped else z
        pos = self.W(f"blocks.{bi}.pos")
        pos = pos.flip(0) if flipped else pos
        rows = 2 * B if guided else B
        lab = torch.cat([labels, torch.full_like(labels, -1)]) if guided else labels
        cls = self.class_bias(bi, lab) if self.ncls > 0 else None
        temps = torch.ones(rows, 1, 1, 1)
        if guided:
            temps[B:] = attn_temp
        cache = [([], []) for _ in range(self.nlayers)]
        x = zm.clone()
        for i in range(self.T - 1):
            u = x[:, i : i + 1]
            if guided:
                u = torch.cat([u, u], 0)
            a, b = self.step(bi, u, i, pos, cls, cache, temps)
            if guided:
                ac, au, bc, bu = a[:B], a[B:], b[:B], b[B:]
                a = ac + weight * (ac - au)
                b = bc + weight * (bc - bu)
            x[:, i + 1 : i + 2] = zm[:, i + 1 : i + 2] * torch.exp(a) + b
        return x.flip(1) if flipped else x

    def sample(self, z, labels, weight, attn_temp):
        guided = weight != 0 and (self.ncls > 0 or attn_temp != 1)
        x = z
        for k in range(self.nblocks):
            bi = self.nblocks - 1 - k
            x = self.invert_block(bi, x, labels, guided, weight, attn_temp)
        return self.unpatchify(x)

    def unpatchify(self, x):
        B, p, s, C = x.shape[0], self.p, self.side, self.cfg["inChannels"]
        return x.reshape(B, s, s, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, s * p, s * p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--noise", required=True, help="safetensors with 'z' [N, T, D] float32 and 'labels' [N] int32")
    ap.add_argument("--workloads", required=True, help="comma list of BATCH:WEIGHT, e.g. 1:0,1:1.5")
    ap.add_argument("--attn-temp", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for the images (torch-B-W.safetensors)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    twin = Twin(a.model)
    data = read_safetensors(a.noise)
    z_all = torch.from_numpy(data["z"])
    labels_all = torch.from_numpy(data["labels"].astype(np.int64))
    results = []
    with torch.no_grad():
        for wl in a.workloads.split(","):
            bs, ws = wl.split(":")
            batch, weight = int(bs), float(ws)
            z = z_all[:batch].clone()
            labels = labels_all[:batch].clone()
            t0 = time.perf_counter()
            img = twin.sample(z, labels, weight, a.attn_temp)
            first = (time.perf_counter() - t0) * 1000
            for _ in range(a.warmup):
                twin.sample(z, labels, weight, a.attn_temp)
            samples = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                twin.sample(z, labels, weight, a.attn_temp)
                samples.append((time.perf_counter() - t0) * 1000)
            if a.out:
                write_safetensors(os.path.join(a.out, f"torch-{batch}-{ws}.safetensors"), {"images": img.numpy().astype(np.float32)})
            results.append({
                "batch": batch,
                "weight": weight,
                "solver": "sequential",
                "firstCallMs": first,
                "samplesMs": samples,
                "medianMs": float(np.median(samples)) if samples else first,
                "calls": twin.nblocks * (twin.T - 1),
            })
    print(json.dumps({"kind": "torch", "threads": torch.get_num_threads(), "version": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
