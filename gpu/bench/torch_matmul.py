"""Median fp32 matmul TFLOP/s in PyTorch (TF32 off), to put next to gpu-bench's figures.

Usage: python3 gpu/bench/torch_matmul.py 1024 4096
Prints lines "RESULT<TAB>torch fp32<TAB>matmul f32 N^3<TAB>value<TAB>TFLOP/s".
"""
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])


def main():
    sizes = [int(arg) for arg in sys.argv[1:]] or [1024, 4096]
    for size in sizes:
        a = torch.rand(size, size, device="cuda") - 0.5
        b = torch.rand(size, size, device="cuda") - 0.5
        torch.mm(a, b)
        torch.cuda.synchronize()
        samples = []
        for _ in range(10):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        tflops = 2 * size**3 / median(samples) / 1e12
        print(f"RESULT\ttorch fp32\tmatmul f32 {size}^3\t{tflops}\tTFLOP/s")


if __name__ == "__main__":
    main()
