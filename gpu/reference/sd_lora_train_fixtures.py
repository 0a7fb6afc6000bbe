"""One LoRA training step on the tiny SD pipelines with PEFT and diffusers, as reference tensors, so
thitl's LoRA training (loss, gradients, clipping, AdamW, export) is tested without Python.

The step follows diffusers' `examples/text_to_image/train_text_to_image_lora.py` (f32, no noise
offset, no SNR weighting): the UNet frozen, `unet.add_adapter(LoraConfig(r=4, lora_alpha=8,
target_modules=["to_q", "to_k", "to_v", "to_out.0"]))` (lora_dropout 0, so the step has no
randomness), `DDPMScheduler.from_pretrained(pipeline, subfolder="scheduler")`,
`noisy = scheduler.add_noise(x0, noise, t)`, text states `text_encoder(ids)[0]` of prompts tokenized
with `padding="max_length"`, `truncation=True`, the target `noise` (sd1, epsilon) or
`scheduler.get_velocity(x0, noise, t)` (sd2, v_prediction), `loss = F.mse_loss(pred.float(),
target.float(), reduction="mean")`, `loss.backward()`, `clip_grad_norm_(lora_params, 1.0)`, one
`AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)` step. Unlike the default init
(B = 0, which gives A a zero gradient), A and B start at fixed random values (A ~ N(0, 0.2^2),
B ~ N(0, 0.1^2), seeded), so every gradient is non-zero and the adapter visibly changes the output.

Writes, per variant (sd1, sd2), under OUT/VARIANT/train/:
- initial/pytorch_lora_weights.safetensors: the starting adapter, as
  `StableDiffusionPipeline.save_lora_weights(dir, unet_lora_layers=get_peft_model_state_dict(unet),
  unet_lora_adapter_metadata=config)` writes it (keys `unet.<module>.lora_A.weight` [r, in] and
  `.lora_B.weight` [out, r]; rank and alpha in the header's `lora_adapter_metadata` JSON, its
  `unet.target_modules` sorted so the bytes do not depend on Python's hash seed);
- after_step/pytorch_lora_weights.safetensors: the same after the clipped AdamW step;
- reference.safetensors (all f32): `latents` (x0) [2,4,H,W], `noise`, `timesteps` [2] (int64 in
  torch, stored as f32: 999 and 250), `sqrt_alpha_prod` / `sqrt_one_minus_alpha_prod` [2] (what
  add_noise multiplies by), `noisy_latents`, `encoder_hidden_states` [2,L,32], `target`,
  `model_pred` (UNet output with the initial adapter), `loss` [1], `grad.<key>` for every key of
  the saved file (the raw gradient of the loss, before clipping), `grad_norm` [1] (the global L2
  norm clip_grad_norm_ returns, before clipping), `model_pred_after_step` and `loss_after_step` [1]
  (the same batch through the updated adapter);
- reference.json: every setting, prompts, token ids, timesteps, shapes, library versions, the keys
  and the header metadata of the saved files.

The arithmetic, all f32 (checked bit for bit against the files when they were made):
- alphas_cumprod = cumprod(1 - linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2);
  a = alphas_cumprod[t] ** 0.5, s = (1 - alphas_cumprod[t]) ** 0.5;
  noisy = a * x0 + s * noise; velocity = a * noise - s * x0;
- a LoRA module: y = base(x) + (x @ A.T) @ B.T * (alpha / r);
- clip: norm = ||(||g_i||_2 for each tensor)||_2, g *= min(1, 1 / (norm + 1e-6));
- AdamW (step 1): p *= 1 - lr * wd; m = 0.1 * g; v = 0.001 * g * g;
  p -= (lr / (1 - 0.9)) * m / (sqrt(v) / sqrt(1 - 0.999) + eps).

Checked here (asserts): a fresh pipeline's `load_lora_weights` reads each saved file back with
exactly its keys and values (nothing missing, nothing unexpected), and its UNet then gives
`model_pred` (initial) and `model_pred_after_step` (after_step) to 1e-6 relative, so each file
really is that adapter with rank and alpha applied. `--check` also rebuilds everything in a
temporary folder and compares every byte.

    .venv-sd/bin/python gpu/reference/sd_lora_train_fixtures.py --out gpu/tests/fixtures/sd \\
        --variant all --check

(.venv-sd from requirements-sd.txt plus peft==0.21.2; reads the pipelines under
gpu/tests/fixtures/sd/VARIANT/pipeline, or --pipelines.)
"""

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import diffusers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import DDPMScheduler, StableDiffusionPipeline  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINES = os.path.join(HERE, "..", "tests", "fixtures", "sd")
WEIGHTS = "pytorch_lora_weights.safetensors"

RANK = 4
ALPHA = 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
A_STD = 0.2
B_STD = 0.1
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0
TIMESTEPS = [999, 250]
PROMPTS = [
    "a red fox sitting in fresh snow, watercolor",
    "an old stone bridge over a quiet river at dawn",
]
VARIANTS = {"sd1": dict(latent_hw=(8, 12), seed=11), "sd2": dict(latent_hw=(12, 8), seed=12)}


def pipeline(pipelines, name):
    return StableDiffusionPipeline.from_pretrained(os.path.join(pipelines, name, "pipeline"),
                                                   safety_checker=None, requires_safety_checker=False)


def file_key(param_name):
    """`down_blocks.0….to_q.lora_A.default.weight` (the UNet parameter) -> the saved file's key."""
    assert ".lora_A.default." in param_name or ".lora_B.default." in param_name, param_name
    return "unet." + param_name.replace(".default.", ".")


def sort_header_metadata(path):
    """safetensors writes the header's `__metadata__` entries in hash-map order, which changes from
    run to run; put them in sorted order (same bytes otherwise, same header length)."""
    with open(path, "rb") as handle:
        data = handle.read()
    (length,) = struct.unpack("<Q", data[:8])
    text = data[8:8 + length].decode("utf-8")
    header = json.loads(text, object_pairs_hook=dict)

    def dump(obj):
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    assert dump(header) == text.rstrip(" "), "the header must re-serialize to the same bytes"
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    sorted_text = dump(header).encode("utf-8")
    assert len(sorted_text) <= length
    with open(path, "wb") as handle:
        handle.write(data[:8] + sorted_text + b" " * (length - len(sorted_text)) + data[8 + length:])


def save_adapter(unet, config, folder):
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet),
                                              unet_lora_adapter_metadata=metadata)
    path = os.path.join(folder, WEIGHTS)
    sort_header_metadata(path)
    return path


def check_loads(pipelines, name, path, batch, expected_pred):
    """diffusers reads the file back exactly and its UNet gives `expected_pred`."""
    saved = load_file(path)
    fresh = pipeline(pipelines, name)
    fresh.load_lora_weights(os.path.dirname(path))
    loaded = get_peft_model_state_dict(fresh.unet, adapter_name=fresh.get_active_adapters()[0])
    loaded = {"unet." + k: v for k, v in loaded.items()}
    assert sorted(loaded) == sorted(saved), (
        f"{path}: missing {sorted(set(saved) - set(loaded))}, unexpected {sorted(set(loaded) - set(saved))}")
    assert all(torch.equal(loaded[k], saved[k]) for k in saved), f"{path}: values changed on load"
    with torch.no_grad():
        pred = fresh.unet(batch["noisy_latents"], batch["timesteps"], batch["encoder_hidden_states"],
                          return_dict=False)[0]
    difference = ((pred - expected_pred).abs().max() / expected_pred.abs().max()).item()
    assert difference <= 1e-6, f"{path}: the loaded adapter gives another model_pred ({difference:.2e})"
    return difference


def make_variant(name, pipelines, out):
    settings = VARIANTS[name]
    folder = os.path.join(out, name, "train")
    os.makedirs(folder, exist_ok=True)
    generator = torch.Generator().manual_seed(settings["seed"])

    pipe = pipeline(pipelines, name)
    pipe_dir = os.path.join(pipelines, name, "pipeline")
    scheduler = DDPMScheduler.from_pretrained(pipe_dir, subfolder="scheduler")
    prediction_type = scheduler.config.prediction_type
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    text_encoder.requires_grad_(False)

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=TARGETS)
    assert config.lora_dropout == 0.0
    unet.add_adapter(config)
    lora = [(n, p) for n, p in sorted(unet.named_parameters()) if p.requires_grad]
    assert lora and all("lora_" in n for n, _ in lora), "only the LoRA tensors train"
    with torch.no_grad():
        for n, p in lora:
            std = A_STD if ".lora_A." in n else B_STD
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    keys = [file_key(n) for n, _ in lora]
    initial_path = save_adapter(unet, config, os.path.join(folder, "initial"))
    assert sorted(load_file(initial_path)) == sorted(keys), "saved keys = unet. + PEFT names without adapter"

    # The batch, as the training script builds it.
    h, w = settings["latent_hw"]
    latents = torch.randn((2, 4, h, w), generator=generator)
    noise = torch.randn((2, 4, h, w), generator=generator)
    timesteps = torch.tensor(TIMESTEPS, dtype=torch.int64)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    ids = tokenizer(PROMPTS, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        encoder_hidden_states = text_encoder(ids, return_dict=False)[0]
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(prediction_type)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    batch = dict(noisy_latents=noisy_latents, timesteps=timesteps, encoder_hidden_states=encoder_hidden_states)

    # The step.
    unet.train()
    params = [p for _, p in lora]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss.backward()
    grads = {key: p.grad.detach().clone() for key, (_, p) in zip(keys, lora)}
    assert all(g.abs().max() > 0 for g in grads.values()), "every LoRA tensor must get a gradient"
    before = {key: p.detach().clone() for key, (_, p) in zip(keys, lora)}
    grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad()
    after_path = save_adapter(unet, config, os.path.join(folder, "after_step"))
    moved = max((p.detach() - before[k]).abs().max().item() for k, (_, p) in zip(keys, lora))
    with torch.no_grad():
        model_pred_after = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss_after = F.mse_loss(model_pred_after.float(), target.float(), reduction="mean")
        unet.disable_adapters()
        base_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        unet.enable_adapters()
    model_pred = model_pred.detach()
    lora_effect = ((model_pred - base_pred).norm() / base_pred.norm()).item()
    assert lora_effect > 0.05, f"the adapter must visibly change the output ({lora_effect})"
    assert loss_after < loss, "the step must lower the loss on its own batch"

    load_initial = check_loads(pipelines, name, initial_path, batch, model_pred)
    load_after = check_loads(pipelines, name, after_path, batch, model_pred_after)

    tensors = {
        "latents": latents, "noise": noise, "timesteps": timesteps.float(),
        "sqrt_alpha_prod": alphas_cumprod ** 0.5, "sqrt_one_minus_alpha_prod": (1 - alphas_cumprod) ** 0.5,
        "noisy_latents": noisy_latents, "encoder_hidden_states": encoder_hidden_states, "target": target,
        "model_pred": model_pred, "loss": loss.detach().reshape(1), "grad_norm": grad_norm.detach().reshape(1),
        "model_pred_after_step": model_pred_after, "loss_after_step": loss_after.reshape(1),
    }
    tensors.update({f"grad.{k}": g for k, g in grads.items()})
    tensors = {k: v.detach().float().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(folder, "reference.safetensors"))

    with safe_open(initial_path, "pt") as handle:
        header = dict(sorted(handle.metadata().items()))
    shapes = {k: list(v.shape) for k, v in load_file(initial_path).items()}
    info = {
        "variant": name,
        "pipeline": f"../pipeline ({name})",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "safetensors": safetensors.__version__},
        "lora": {"rank": RANK, "alpha": ALPHA, "scale": ALPHA / RANK, "dropout": 0.0,
                 "target_modules": TARGETS, "init": f"A ~ N(0, {A_STD}^2), B ~ N(0, {B_STD}^2), seed "
                 f"{settings['seed']}, drawn in sorted parameter-name order, then latents, then noise",
                 "modules": len(keys) // 2},
        "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "amsgrad": False, "steps": 1},
        "clip_grad_norm": {"max_norm": MAX_GRAD_NORM, "norm_type": 2.0,
                           "clip_coef": min(MAX_GRAD_NORM / (grad_norm.item() + 1e-6), 1.0)},
        "scheduler": {"class": "DDPMScheduler", "beta_schedule": scheduler.config.beta_schedule,
                      "beta_start": scheduler.config.beta_start, "beta_end": scheduler.config.beta_end,
                      "num_train_timesteps": scheduler.config.num_train_timesteps,
                      "prediction_type": prediction_type},
        "loss": "F.mse_loss(model_pred.float(), target.float(), reduction='mean')",
        "prompts": PROMPTS,
        "token_ids": ids.tolist(),
        "timesteps": TIMESTEPS,
        "timesteps_dtype": "int64 in torch; stored as f32 in reference.safetensors",
        "values": {"loss": loss.item(), "grad_norm": grad_norm.item(), "loss_after_step": loss_after.item(),
                   "max_weight_change": moved, "lora_effect_on_model_pred": lora_effect,
                   "load_check_initial": load_initial, "load_check_after_step": load_after},
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "adapter_keys": sorted(keys),
        "adapter_shapes": dict(sorted(shapes.items())),
        "adapter_header": header,
    }
    with open(os.path.join(folder, "reference.json"), "w") as handle:
        json.dump(info, handle, indent=1)
        handle.write("\n")
    print(f"{name}: {len(keys) // 2} modules, loss {loss.item():.6f} -> {loss_after.item():.6f}, "
          f"grad norm {grad_norm.item():.4f}, LoRA changes model_pred by {lora_effect:.3f} (relative), "
          f"weights moved by up to {moved:.2e}", file=sys.stderr)


def digest(folder):
    sums = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as handle:
                sums[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return sums


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (writes VARIANT/train/ under it)")
    parser.add_argument("--pipelines", default=PIPELINES, help="folder holding VARIANT/pipeline")
    parser.add_argument("--variant", choices=["sd1", "sd2", "all"], default="all")
    parser.add_argument("--check", action="store_true",
                        help="also build again in a temporary folder and compare every byte")
    args = parser.parse_args()
    names = ["sd1", "sd2"] if args.variant == "all" else [args.variant]
    for name in names:
        make_variant(name, args.pipelines, args.out)
    if args.check:
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                make_variant(name, args.pipelines, tmp)
                a = digest(os.path.join(args.out, name, "train"))
                b = digest(os.path.join(tmp, name, "train"))
                assert a == b, f"{name}: not bit-for-bit reproducible: " + str(
                    sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))
            print(f"{name}: rebuilt bit for bit ({len(a)} files)", file=sys.stderr)


if __name__ == "__main__":
    main()
