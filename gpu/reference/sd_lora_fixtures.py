"""LoRA adapters for the tiny SD1 pipeline in the formats people load, and diffusers' samples with
them, so thitl's adapter loading is tested against diffusers without Python at test time.

Writes, under OUT (gpu/tests/fixtures/sd/sd1/lora):
- diffusers/pytorch_lora_weights.safetensors: `StableDiffusionPipeline.save_lora_weights` output
  (keys `unet.….lora_A.weight` / `lora_B.weight`, rank and alpha in the header's
  `lora_adapter_metadata`) of a PEFT adapter (r 4, alpha 8) on the attention projections, the
  feed-forward output and the 1x1 `proj_in` convolutions, with random A and B; diffusers reads
  every tensor back (checked: passing it through `convert_state_dict_to_diffusers` first, as some
  training scripts do, gives `lora.down`/`lora.up` keys for the attention projections that
  diffusers 0.42 then skips when the metadata is present);
- kohya.safetensors: the same adapter in kohya's names (`lora_unet_…lora_down.weight`,
  `.lora_up.weight`, `.alpha`), checked here: diffusers' own kohya loader gives the same sample;
- reference.safetensors: `init_latents`, and the 5-step guided DDIM latents with the adapter at
  full strength (`latents`) and at 0.5 (`half_latents`, `set_adapters(..., adapter_weights=[0.5])`).

    .venv-sd/bin/python gpu/reference/sd_lora_fixtures.py --out gpu/tests/fixtures/sd/sd1/lora

(requirements-sd.txt plus peft 0.21.2.)
"""

import argparse
import json
import os

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINE = os.path.join(HERE, "..", "tests", "fixtures", "sd", "sd1", "pipeline")
PROMPT = "A lighthouse standing on a rocky cliff while waves crash below, oil painting"
NEGATIVE = "blurry, low quality, watermark"


def pipeline():
    return StableDiffusionPipeline.from_pretrained(PIPELINE, safety_checker=None, requires_safety_checker=False)


def sample(pipe, init, **kwargs):
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=7.5, eta=0.0,
                height=16, width=24, latents=init.clone(), output_type="latent", **kwargs).images


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    pipe = pipeline()
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "proj_in"])
    pipe.unet.add_adapter(config)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_" in name:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in ** 0.5)
    adapter = get_peft_model_state_dict(pipe.unet)
    diffusers_dir = os.path.join(args.out, "diffusers")
    StableDiffusionPipeline.save_lora_weights(diffusers_dir, unet_lora_layers=adapter,
                                              unet_lora_adapter_metadata=config.to_dict())

    init = torch.randn((1, 4, 8, 12), generator=generator)
    fresh = pipeline()
    fresh.load_lora_weights(diffusers_dir)
    loaded = get_peft_model_state_dict(fresh.unet, adapter_name=fresh.get_active_adapters()[0])
    assert sorted(loaded) == sorted(adapter) and all(torch.equal(loaded[k], adapter[k]) for k in adapter), \
        "diffusers must read back every tensor of the adapter"
    with_lora = sample(fresh, init)
    fresh.set_adapters(fresh.get_active_adapters(), adapter_weights=[0.5])
    half = sample(fresh, init)
    without = sample(pipeline(), init)
    assert (with_lora - without).abs().max() > 0.1, "the adapter must change the sample"

    # kohya's names for the same adapter, checked with diffusers' own kohya loader.
    state = load_file(os.path.join(diffusers_dir, "pytorch_lora_weights.safetensors"))
    kohya = {}
    for key, value in state.items():
        # save_lora_weights writes the attention projections as `lora.down`/`lora.up` and the
        # other layers as PEFT's `lora_A`/`lora_B`.
        key = key.removeprefix("unet.")
        for suffix, kind in ((".lora.down.weight", "down"), (".lora.up.weight", "up"),
                             (".lora_A.weight", "down"), (".lora_B.weight", "up")):
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                break
        else:
            raise KeyError(key)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{kind}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(float(config.lora_alpha))
    kohya_path = os.path.join(args.out, "kohya.safetensors")
    save_file(kohya, kohya_path)
    through_kohya = pipeline()
    through_kohya.load_lora_weights(kohya_path)
    kohya_sample = sample(through_kohya, init)
    difference = ((kohya_sample - with_lora).abs().max() / with_lora.abs().max()).item()
    assert difference < 1e-5, f"diffusers reads the kohya file differently: {difference}"

    save_file({"init_latents": init, "latents": with_lora, "half_latents": half, "no_lora_latents": without},
              os.path.join(args.out, "reference.safetensors"))
    with open(os.path.join(args.out, "reference.json"), "w") as handle:
        json.dump({"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 5, "guidance_scale": 7.5,
                   "scheduler": "DDIM (the pipeline's)", "rank": config.r, "alpha": config.lora_alpha,
                   "target_modules": sorted(config.target_modules), "half_weight": 0.5,
                   "kohya_vs_diffusers": difference}, handle, indent=1)
        handle.write("\n")
    print(f"{len(state) // 2} modules; sample moved {((with_lora - without).abs().max()).item():.3f}; "
          f"kohya file gives diffusers' sample to {difference:.1e}")


if __name__ == "__main__":
    main()
