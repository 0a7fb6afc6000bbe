"""Median fp32 matmul TFLOP/s in PyTorch (TF32 off), to put next to gpu-bench's figures.

Usage: python3 gpu/bench/torch_matmul.py 1024 4096 16384x1536x384
A plain N times a square N^3 product; MxNxK a linear layer x·Wᵀ (x: M×K, W: N×K), as gpu-bench's
--linear shapes. Prints lines "RESULT<TAB>torch fp32<TAB>matmul f32 N^3|linear f32 MxNxK<TAB>value<TAB>TFLOP/s".
"""
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])


def time_product(run, flops):
    for _ in range(5):  # warm-up, also brings the clocks up
        run()
    torch.cuda.synchronize()
    samples = []
    for _ in range(10):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return flops / median(samples) / 1e12


def main():
    shapes = sys.argv[1:] or ["1024", "4096"]
    for shape in shapes:
        if "x" in shape:
            m, n, k = (int(part) for part in shape.split("x"))
            x = torch.rand(m, k, device="cuda") - 0.5
            w = torch.rand(n, k, device="cuda") - 0.5
            tflops = time_product(lambda: torch.nn.functional.linear(x, w), 2 * m * n * k)
            print(f"RESULT\ttorch fp32\tlinear f32 {m}x{n}x{k}\t{tflops}\tTFLOP/s")
        else:
            size = int(shape)
            a = torch.rand(size, size, device="cuda") - 0.5
            b = torch.rand(size, size, device="cuda") - 0.5
            tflops = time_product(lambda: torch.mm(a, b), 2 * size**3)
            print(f"RESULT\ttorch fp32\tmatmul f32 {size}^3\t{tflops}\tTFLOP/s")


if __name__ == "__main__":
    main()
