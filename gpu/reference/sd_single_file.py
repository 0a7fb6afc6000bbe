"""Write a diffusers Stable Diffusion 1.x pipeline as a single-file checkpoint with the original
(CompVis/LDM) key names, the format A1111 and civitai distribute, and check it with diffusers' own
loader: `StableDiffusionPipeline.from_single_file(file, config=<the pipeline folder>)` must give
back every tensor of the pipeline exactly. thitl's key map (gpu/src/sd/single_file.rs) is tested
against the file this writes; diffusers' loader is the independent judge of the file.

Run (the venv of gpu/tests/fixtures/sd/README.md):

    .venv-sd/bin/python gpu/reference/sd_single_file.py \
        --pipeline gpu/tests/fixtures/sd/sd1/pipeline --out gpu/tests/fixtures/sd/sd1/single_file.safetensors
"""

import argparse
import json
import os

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file


def unet_map(config):
    """diffusers UNet prefix -> LDM prefix (under model.diffusion_model.), for resnets a flag."""
    blocks = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = [layers] * blocks if isinstance(layers, int) else list(layers)
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    pairs = [("time_embedding.linear_1", "time_embed.0", False), ("time_embedding.linear_2", "time_embed.2", False),
             ("conv_in", "input_blocks.0.0", False), ("conv_norm_out", "out.0", False), ("conv_out", "out.2", False),
             ("mid_block.resnets.0", "middle_block.0", True), ("mid_block.attentions.0", "middle_block.1", False),
             ("mid_block.resnets.1", "middle_block.2", True)]
    n = 1
    for i in range(blocks):
        for j in range(layers[i]):
            pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", True))
            if down_attn[i]:
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if i + 1 < blocks:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1
    n = 0
    for i in range(blocks):
        count = layers[blocks - 1 - i] + 1
        for j in range(count):
            pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", True))
            if up_attn[i]:
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", False))
            if j + 1 == count and i + 1 < blocks:
                slot = 2 if up_attn[i] else 1
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{n}.{slot}.conv", False))
            n += 1
    return pairs


UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def rename_unet(state, config):
    pairs = sorted(unet_map(config), key=lambda p: -len(p[0]))
    out = {}
    for key, value in state.items():
        for diffusers, ldm, resnet in pairs:
            if key.startswith(diffusers + "."):
                rest = key[len(diffusers) + 1:]
                if resnet:
                    part, _, tail = rest.partition(".")
                    rest = f"{UNET_RESNET[part]}.{tail}"
                out["model.diffusion_model." + ldm + "." + rest] = value
                break
        else:
            raise KeyError(f"unmapped UNet key {key}")
    return out


def rename_vae(state, config):
    blocks = len(config["block_out_channels"])
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in state.items():
        k = key
        for side in ("encoder", "decoder"):
            k = k.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
            k = k.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
            if k.startswith(f"{side}.mid_block.attentions.0."):
                rest = k[len(f"{side}.mid_block.attentions.0."):]
                for new, old in attn.items():
                    if rest.startswith(new + "."):
                        rest = old + rest[len(new):]
                        # The original attention projections are 1x1 convolutions.
                        if old in ("q", "k", "v", "proj_out") and rest.endswith(".weight"):
                            value = value[:, :, None, None]
                        break
                k = f"{side}.mid.attn_1.{rest}"
            k = k.replace(f"{side}.conv_norm_out.", f"{side}.norm_out.")
        if k.startswith("encoder.down_blocks."):
            parts = k.split(".")
            i = parts[2]
            if parts[3] == "resnets":
                k = ".".join(["encoder", "down", i, "block", parts[4]] + parts[5:])
            else:  # downsamplers.0.conv
                k = ".".join(["encoder", "down", i, "downsample", "conv"] + parts[6:])
        if k.startswith("decoder.up_blocks."):
            parts = k.split(".")
            i = str(blocks - 1 - int(parts[2]))
            if parts[3] == "resnets":
                k = ".".join(["decoder", "up", i, "block", parts[4]] + parts[5:])
            else:  # upsamplers.0.conv
                k = ".".join(["decoder", "up", i, "upsample", "conv"] + parts[6:])
        k = k.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + k] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = args.pipeline
    unet = load_file(os.path.join(root, "unet", "diffusion_pytorch_model.safetensors"))
    vae = load_file(os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"))
    text = load_file(os.path.join(root, "text_encoder", "model.safetensors"))
    with open(os.path.join(root, "unet", "config.json")) as f:
        unet_config = json.load(f)
    with open(os.path.join(root, "vae", "config.json")) as f:
        vae_config = json.load(f)
    state = {}
    state.update(rename_unet(unet, unet_config))
    state.update(rename_vae(vae, vae_config))
    for key, value in text.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    # What original checkpoints also carry: the schedule, and an integer buffer, both unused.
    state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
        text["embeddings.position_embedding.weight"].shape[0], dtype=torch.int64)[None]
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, args.out)

    # diffusers' own loader must give back every tensor exactly.
    pipe = StableDiffusionPipeline.from_single_file(args.out, config=os.path.abspath(root), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    for name, original in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        loaded = getattr(pipe, name).state_dict()
        for key, value in original.items():
            other = loaded.get(key, loaded.get("text_model." + key))
            assert other is not None, f"{name}: diffusers did not load {key}"
            assert torch.equal(other.reshape(value.shape), value), f"{name}: {key} differs"
    print(f"wrote {args.out}: {len(state)} tensors; diffusers' from_single_file gives back every tensor")


if __name__ == "__main__":
    main()
