"""diffusers' side of `thitl bench sd`: Stable Diffusion 1.5 at full size with random weights
(speed does not depend on the values), a guided pipeline call — text encoder on the guidance
batch, STEPS UNet evaluations with DDIM updates, VAE decode — timed per batch size, in fp32 with
TF32 off (the comparison) and in fp16 (for the record), with the peak GPU memory.

    python3 gpu/bench/sd15_diffusers.py --size 512 --steps 25 --batch 1,4

Needs torch, diffusers and transformers (`gpu/reference/requirements-sd.txt`). Prints one
Markdown row per (precision, batch).
"""

import argparse
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel


def build(device, dtype):
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
        cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, vocab_size=49408,
                                        hidden_act="quick_gelu"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return [m.to(device=device, dtype=dtype).eval() for m in (unet, vae, text)] + [scheduler]


@torch.no_grad()
def call(unet, vae, text, scheduler, batch, size, steps, device, dtype):
    ids = (torch.arange(2 * batch * 77, device=device) * 7919 % 49408).reshape(2 * batch, 77)
    context = text(ids)[0]
    scheduler.set_timesteps(steps)
    latents = torch.randn((batch, 4, size // 8, size // 8), device=device, dtype=dtype)
    for t in scheduler.timesteps:
        noise = unet(torch.cat([latents, latents]), t, context).sample
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
    return vae.decode(latents / 0.18215).sample


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", default="1,4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,fp16")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = args.device == "cuda"
    print(f"| precision | batch | images/s | s per call | peak GPU memory GiB |  ({torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"torch {torch.__version__}, {args.size}x{args.size}, {args.steps} steps)")
    print("|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        dtype = torch.float16 if precision == "fp16" else torch.float32
        models = build(args.device, dtype)
        for batch in [int(b) for b in args.batch.split(",")]:
            call(*models, batch, args.size, 1, args.device, dtype)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            call(*models, batch, args.size, args.steps, args.device, dtype)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            print(f"| diffusers {precision} | {batch} | {batch / seconds:.3f} | {seconds:.2f} | {peak:.1f} |", flush=True)
        del models
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
