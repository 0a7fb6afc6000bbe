"""A tiny UNet shaped like the distilled SD variants (BK-SDM, small-sd, tiny-sd): a different
number of ResNets and transformer layers per block, per-block head counts, three blocks, and no
mid block (`mid_block_type: null`, as BK-SDM-Small/Tiny). Saved by diffusers with one reference
call, to show that thitl's UNet follows the config without new code.

Run (the venv of gpu/tests/fixtures/sd/README.md):

    .venv-sd/bin/python gpu/reference/sd_distilled_unet.py --out gpu/tests/fixtures/sd/distilled
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from sd_fixtures import randomize  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 24, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None,
        layers_per_block=(1, 2, 1),
        transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=(2, 4, 2),
        norm_num_groups=8,
        cross_attention_dim=32,
    ).eval()
    with torch.no_grad():
        randomize(unet, generator)
        latents = torch.randn((2, 4, 8, 12), generator=generator)
        timesteps = torch.tensor([701, 15])
        context = torch.randn((2, 16, 32), generator=generator)
        output = unet(latents, timesteps, context).sample
    unet.save_pretrained(os.path.join(args.out, "unet"), safe_serialization=True)
    tensors = {"latents": latents, "timesteps": timesteps.to(torch.float32), "context": context,
               "noise_pred": output}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "reference.safetensors"))
    with open(os.path.join(args.out, "reference.json"), "w") as handle:
        json.dump({"seed": args.seed, "shapes": {k: list(v.shape) for k, v in tensors.items()},
                   "call": "unet(latents, timesteps, context).sample"}, handle, indent=1)
        handle.write("\n")
    print(f"output std {output.std().item():.3f}, max {output.abs().max().item():.3f}")


if __name__ == "__main__":
    main()
