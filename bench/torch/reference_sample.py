"""apple/ml-tarflow's own sampler, timed as a whole process by bench/sample_process.ts.

Imports transformer_flow from a checkout at --reference-dir (the user's; nothing of it is copied
here), builds its Model for the config in --config (the project's config.json), loads the weights
`starflow export --format ml-tarflow` wrote (a torch.save zip, weights_only), and draws guided samples
from the noise tokens and labels of --noise (safetensors: 'noise' [B, T, D], 'y' [B]) with
Model.reverse (its KV-cached sequential sampler). Writes the samples [B, C, H, W] as raw float32
to --out. Torch 1.13 has no scaled_dot_product_attention: the reference's einsum path runs.
"""
import argparse
import json
import sys

import torch

from tarflow_train import layers_per_block, read_safetensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference-dir", required=True)
    ap.add_argument("--config", required=True, help="the model's config.json")
    ap.add_argument("--weights", required=True, help="model.pth from `starflow export --format ml-tarflow`")
    ap.add_argument("--noise", required=True)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.reference_dir)
    import transformer_flow

    transformer_flow.Attention.USE_SPDA = False
    with open(args.config) as f:
        cfg = json.load(f)
    model = transformer_flow.Model(
        in_channels=cfg["inChannels"], img_size=cfg["imgSize"], patch_size=cfg["patchSize"], channels=cfg["width"],
        num_blocks=cfg["numBlocks"], layers_per_block=layers_per_block(cfg), num_classes=cfg["numClasses"],
    )
    model.load_state_dict(torch.load(args.weights, weights_only=True), strict=True)
    model.eval()
    tensors, _ = read_safetensors(args.noise)
    with torch.no_grad():
        samples = model.reverse(tensors["noise"].float(), tensors["y"].long(), guidance=args.cfg)
    samples.float().numpy().tofile(args.out)


if __name__ == "__main__":
    main()
