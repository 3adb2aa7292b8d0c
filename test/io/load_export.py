"""Loads a `starflow export --format ml-starflow` directory into apple/ml-starflow's own Model
(strict) and prints its forward z for the given inputs, as JSON. Run with the reference checkout
on the path: python3 load_export.py EXPORT_DIR INPUTS.safetensors (REFERENCE_DIR on PYTHONPATH).
"""
import json, sys
import torch, yaml

if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):  # torch < 2.0 (Debian's 1.13)
    def _sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
        logits = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.size(-1) ** -0.5)
        if is_causal:
            attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril()
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask.bool(), float("-inf"))
        return logits.softmax(-1) @ v
    torch.nn.functional.scaled_dot_product_attention = _sdpa

import transformer_flow


def read_safetensors(path):
    """float32 tensors of a .safetensors file (8-byte header length, JSON header, data)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(raw[8 + n + a : 8 + n + b]), dtype=torch.float32).reshape(info["shape"])
    return out

TRAIN_NAMES = {"channel_size": "in_channels", "blocks": "num_blocks"}
SKIP = {"adaln", "noise_std", "latent_norm_regularization"}

def model_args(path):
    entries = yaml.safe_load(open(path))["arguments"]
    args = {}
    for entry in entries:
        for k, v in entry.items():
            if k in SKIP:
                continue
            args[TRAIN_NAMES.get(k, k)] = v
    args["layers_per_block"] = [int(n) for n in str(args["layers_per_block"]).split()]
    return args

export_dir, inputs = sys.argv[1], sys.argv[2]
model = transformer_flow.Model(**model_args(f"{export_dir}/config.yaml"))
state = torch.load(f"{export_dir}/model.pth", map_location="cpu", weights_only=True)
model.load_state_dict(state, strict=True)
model.eval()
t = read_safetensors(inputs)
with torch.no_grad():
    z = model(t["x"], t.get("text"))[0]
print(json.dumps({"z": z.flatten().tolist()}))
