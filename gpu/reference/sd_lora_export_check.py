"""diffusers on the adapters `thitl model train-lora` exports: each loads, and samples as thitl does.

Given a pipeline folder and thitl's three exports of one trained adapter (PEFT folder, kohya file,
merged UNet folder), checks with diffusers itself:
- `StableDiffusionPipeline.load_lora_weights(peft_dir)` reads every tensor of the file (no key
  missing or unexpected: the PEFT state dict it builds is exactly the file), and logs no warning;
- the kohya file through diffusers' kohya loader gives the same sample as the PEFT folder;
- the merged UNet loads with `UNet2DConditionModel.from_pretrained` and gives the same sample;
and writes, under OUT, `reference.safetensors` (`init_latents`; diffusers' 5-step guided DDIM
latents with the PEFT adapter, `latents`) and `reference.json` (prompts, settings, the
differences found), so that a test compares `thitl model sample --lora` against diffusers without
Python. Copies the PEFT and kohya files beside them.

    .venv-sd/bin/python gpu/reference/sd_lora_export_check.py \\
        --pipeline gpu/tests/fixtures/sd/sd1/pipeline --peft PEFT_DIR --kohya KOHYA_FILE \\
        --merged MERGED_DIR --out gpu/tests/fixtures/sd/sd1/train/thitl_export

(requirements-sd.txt plus peft 0.21.2.)
"""

import argparse
import json
import logging
import os
import shutil

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

PROMPT = "A lighthouse standing on a rocky cliff while waves crash below, oil painting"
NEGATIVE = "blurry, low quality, watermark"


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        # An adapter for the UNet alone: diffusers says so for the text encoder, as it does for
        # its own UNet-only adapters.
        if "No LoRA keys associated to CLIPTextModel" not in message:
            self.messages.append(message)


def sample(pipe, init):
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=7.5, eta=0.0,
                height=init.shape[2] * 2, width=init.shape[3] * 2, latents=init.clone(), output_type="latent").images


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("--pipeline", "--peft", "--kohya", "--merged", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    def pipeline():
        return StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None,
                                                       requires_safety_checker=False)

    generator = torch.Generator().manual_seed(args.seed)
    init = torch.randn((1, 4, 8, 12), generator=generator)
    collect = Collect()
    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(collect)

    file = load_file(os.path.join(args.peft, "pytorch_lora_weights.safetensors"))
    peft = pipeline()
    peft.load_lora_weights(args.peft)
    loaded = get_peft_model_state_dict(peft.unet, adapter_name=peft.get_active_adapters()[0])
    expected = {key.removeprefix("unet."): value for key, value in file.items()}
    assert sorted(loaded) == sorted(expected), \
        f"keys differ: missing {sorted(set(expected) - set(loaded))}, unexpected {sorted(set(loaded) - set(expected))}"
    assert all(torch.equal(loaded[k], expected[k]) for k in expected), "diffusers changed a tensor while loading"
    assert not collect.messages, f"diffusers warned while loading thitl's PEFT export: {collect.messages}"
    with_lora = sample(peft, init)
    without = sample(pipeline(), init)
    moved = relative(with_lora, without)
    assert moved > 1e-3, f"the adapter barely changes the sample ({moved:.1e})"

    kohya = pipeline()
    collect.messages.clear()  # sampling warns that the tiny tokenizer truncates the prompt
    kohya.load_lora_weights(args.kohya)
    assert not collect.messages, f"diffusers warned while loading thitl's kohya export: {collect.messages}"
    kohya_difference = relative(sample(kohya, init), with_lora)
    assert kohya_difference < 1e-5, f"the kohya export samples differently: {kohya_difference:.1e}"

    merged = pipeline()
    merged.unet = UNet2DConditionModel.from_pretrained(os.path.join(args.merged, "unet"))
    merged_difference = relative(sample(merged, init), with_lora)
    assert merged_difference < 1e-4, f"the merged UNet samples differently: {merged_difference:.1e}"

    os.makedirs(args.out, exist_ok=True)
    shutil.copy(os.path.join(args.peft, "pytorch_lora_weights.safetensors"), args.out)
    shutil.copy(args.kohya, os.path.join(args.out, "lora_kohya.safetensors"))
    save_file({"init_latents": init, "latents": with_lora}, os.path.join(args.out, "reference.safetensors"))
    report = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 5, "guidance_scale": 7.5,
              "scheduler": "DDIM (the pipeline's)", "tensors": len(file),
              "sample_moved_by_adapter": moved, "kohya_vs_peft": kohya_difference,
              "merged_vs_peft": merged_difference}
    with open(os.path.join(args.out, "reference.json"), "w") as handle:
        json.dump(report, handle, indent=1)
        handle.write("\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
