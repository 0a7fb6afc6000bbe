"""The DiT of thitl's `gpu` crate in PyTorch: same modules, same parameter names, same sampler.

It loads the crate's safetensors weights (and LoRA adapters through PEFT), so results can be
compared, and it times PyTorch eager fp32 next to the crate's kernels.

  python3 gpu/reference/dit.py --check DIR     # DIR written by `gpu-bench --dump DIR`
  python3 gpu/reference/dit.py --bench         # RESULT lines: sampling img/s, LoRA steps/s

Design choices shared with the Rust model (gpu/src/model.rs): pixel-space DiT with adaLN-Zero
blocks, GELU (tanh) MLPs, fixed 2-D sin-cos position embedding (first half: column, second half:
row), sinusoidal timestep embedding [cos, sin], text = mean of token embeddings over non-zero ids
(an empty prompt uses the learned `y_embedder.null_text`) → Linear-SiLU-Linear, added to the
timestep embedding. DDPM linear betas 1e-4..0.02 over 1000 steps; DDIM with eta and guidance.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def load_safetensors(path):
    try:
        from safetensors.torch import load_file

        return load_file(path)
    except ImportError:  # a minimal reader (f32 only) where the package is missing
        with open(path, "rb") as handle:
            header_len = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_len))
            data = handle.read()
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            assert info["dtype"] == "F32", name
            start, end = info["data_offsets"]
            values = torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32)
            tensors[name] = values.reshape(info["shape"])
        return tensors


class Config:
    def __init__(self, **values):
        self.image_size = values["image_size"]
        self.channels = values["channels"]
        self.patch = values["patch"]
        self.width = values["width"]
        self.depth = values["depth"]
        self.heads = values["heads"]
        self.mlp_ratio = values["mlp_ratio"]
        self.vocabulary = values["vocabulary"]
        self.max_tokens = values["max_tokens"]
        self.frequency_dim = values["frequency_dim"]


SMALL = dict(image_size=32, channels=3, patch=4, width=128, depth=4, heads=4, mlp_ratio=4,
             vocabulary=512, max_tokens=16, frequency_dim=256)
DIT_S = dict(image_size=32, channels=3, patch=2, width=384, depth=12, heads=6, mlp_ratio=4,
             vocabulary=512, max_tokens=16, frequency_dim=256)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def position_embedding(config):
    grid = config.image_size // config.patch
    quarter = config.width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    def one_d(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    def __init__(self, width, frequency_dim):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return self.mlp(embedding)


class TextEmbedder(nn.Module):
    def __init__(self, vocabulary, width):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.null_text = nn.Parameter(torch.zeros(width))
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, ids):
        mask = (ids != 0).float()
        count = mask.sum(dim=1, keepdim=True)
        pooled = (self.embedding(ids) * mask.unsqueeze(-1)).sum(dim=1) / count.clamp(min=1)
        pooled = pooled + (count == 0).float() * self.null_text
        return self.mlp(pooled)


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, width, patch, channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
    def __init__(self, channels, width, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DiT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.x_embedder = PatchEmbed(config.channels, config.width, config.patch)
        self.t_embedder = TimestepEmbedder(config.width, config.frequency_dim)
        self.y_embedder = TextEmbedder(config.vocabulary, config.width)
        self.register_buffer("pos_embed", position_embedding(config).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer = FinalLayer(config.width, config.patch, config.channels)

    def forward(self, x, t, ids):
        cfg = self.config
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(ids)
        for block in self.blocks:
            h = block(h, c)
        out = self.final_layer(h, c)
        grid, p = cfg.image_size // cfg.patch, cfg.patch
        out = out.reshape(x.shape[0], grid, grid, p, p, cfg.channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(x.shape[0], cfg.channels, grid * p, grid * p)


def alpha_bars():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


@torch.no_grad()
def sample(model, x, ids, negative, steps, eta, guidance_scale, generator=None):
    """DDIM with classifier-free guidance (negative prompt in place of the unconditional one)."""
    bars = alpha_bars()
    stride = 1000 // steps
    sequence = [min(i * stride, 999) for i in range(steps)]
    guided = guidance_scale != 1.0
    all_ids = torch.cat([ids, negative if negative is not None else torch.zeros_like(ids)]) if guided else ids
    batch = x.shape[0]
    for i in reversed(range(steps)):
        t = sequence[i]
        a = float(torch.tensor(bars[t].item(), dtype=torch.float32))
        a_prev = 1.0 if i == 0 else float(torch.tensor(bars[sequence[i - 1]].item(), dtype=torch.float32))
        if guided:
            both = model(torch.cat([x, x]), torch.full((2 * batch,), float(t), device=x.device), all_ids)
            cond, uncond = both[:batch], both[batch:]
            eps = uncond + guidance_scale * (cond - uncond)
        else:
            eps = model(x, torch.full((batch,), float(t), device=x.device), ids)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(0.0, 1 - a / a_prev))
        cx = math.sqrt(a_prev / a)
        ce = math.sqrt(max(0.0, 1 - a_prev - sigma * sigma)) - cx * math.sqrt(1 - a)
        x = cx * x + ce * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
    return x


def relative_error(actual, expected):
    scale = expected.abs().mean()
    return ((actual - expected).abs() / (expected.abs() + scale)).max().item()


def check(directory):
    values = json.load(open(os.path.join(directory, "config.json")))
    config = Config(**values)
    model = DiT(config)
    model.load_state_dict(load_safetensors(os.path.join(directory, "weights.safetensors")), strict=True)
    model.eval()
    case = load_safetensors(os.path.join(directory, "case.safetensors"))
    x, t = case["x"], case["t"]
    ids, negative = case["ids"].long(), case["negative_ids"].long()
    failures = 0
    with torch.no_grad():
        eps = model(x, t, ids)
    error = relative_error(eps, case["epsilon"])
    print(f"CHECK\tforward\tmax relative error {error:.2e}")
    failures += error > 1e-3
    s = values["sample"]
    result = sample(model, case["initial_noise"].clone(), ids, negative, s["steps"], s["eta"], s["guidance_scale"])
    error = relative_error(result, case["sample"])
    print(f"CHECK\tddim sample with guidance and negative prompt\tmax relative error {error:.2e}")
    failures += error > 1e-3
    adapter = os.path.join(directory, "adapter")
    try:
        from peft import PeftModel

        lora_model = PeftModel.from_pretrained(model, adapter)
        how = "peft"
    except ImportError:
        lora_model = merge_adapter_by_hand(model, adapter)
        how = "merged by hand (peft is not installed)"
    with torch.no_grad():
        eps_lora = lora_model(x, t, ids)
    error = relative_error(eps_lora, case["epsilon_lora"])
    print(f"CHECK\tforward with LoRA adapter ({how})\tmax relative error {error:.2e}")
    failures += error > 1e-3
    print("CHECK\tresult\t" + ("ok" if failures == 0 else f"{failures} FAILED"))
    return failures


def merge_adapter_by_hand(model, adapter):
    import copy

    merged = copy.deepcopy(model)
    settings = json.load(open(os.path.join(adapter, "adapter_config.json")))
    scale = settings["lora_alpha"] / settings["r"]
    weights = load_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
    state = merged.state_dict()
    for name, a in weights.items():
        if ".lora_A." not in name:
            continue
        b = weights[name.replace(".lora_A.", ".lora_B.")]
        target = name.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        state[target] = state[target] + scale * b @ a
    merged.load_state_dict(state)
    return merged


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])


def bench(batch=64, steps=25, repeats=3):
    device = "cuda"
    for name, values in (("small", SMALL), ("dit-s", DIT_S)):
        config = Config(**values)
        torch.manual_seed(0)
        model = DiT(config).to(device)
        for parameter in model.parameters():
            nn.init.normal_(parameter, std=0.02)
        model.eval()
        ids = torch.randint(1, config.vocabulary, (batch, config.max_tokens), device=device)
        ids[:, 5:] = 0
        negative = ids.clone() % 3 + (ids > 0).long()
        x = torch.randn(batch, config.channels, config.image_size, config.image_size, device=device)
        sample(model, x, ids, negative, 2, 0.0, 4.0)
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sample(model, x, ids, negative, steps, 0.0, 4.0)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"RESULT\ttorch dit\t{name} sample b{batch} {steps}st\t{batch / median(times)}\timg/s", flush=True)

        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0,
                                                target_modules=r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"))
        lora.train()
        trainable = [p for p in lora.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, eps=1e-8)
        bars = alpha_bars().float().to(device)
        images = torch.rand(batch, config.channels, config.image_size, config.image_size, device=device) * 2 - 1

        def train_step():
            t = torch.randint(0, 1000, (batch,), device=device)
            noise = torch.randn_like(images)
            a = bars[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * images + (1 - a).sqrt() * noise
            loss = F.mse_loss(lora(x_t, t.float(), ids), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            return loss.item()

        train_step()
        times = []
        for _ in range(repeats + 2):
            start = time.perf_counter()
            train_step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"RESULT\ttorch dit\t{name} lora train b{batch}\t{1 / median(times)}\tsteps/s", flush=True)
        del lora, model, optimizer
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="DIR")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    failures = 0
    if args.check:
        failures += check(args.check)
    if args.bench:
        bench(args.batch, args.steps)
    if not args.check and not args.bench:
        parser.print_help()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
