"""JPEG training images and the pixels Pillow decodes from them, so thitl's JPEG reading is tested
against an independent decoder without Python at test time.

Writes, under OUT (gpu/tests/fixtures/sd/images): for each case (`rgb420`: colour, 4:2:0 chroma
subsampling, quality 90; `rgb444_progressive`: colour, no subsampling, progressive; `grey`:
one channel), `<case>.jpg` (24x16, a smooth pattern with edges) and `<case>.decoded.png`, Pillow's
decoding of that JPEG as lossless 8-bit RGB.

    .venv-sd/bin/python gpu/reference/sd_image_fixtures.py --out gpu/tests/fixtures/sd/images
"""

import argparse
import math
import os

from PIL import Image


def pattern(width, height):
    image = Image.new("RGB", (width, height))
    for y in range(height):
        for x in range(width):
            r = int(127 + 120 * math.sin(x / 3.0))
            g = int(255 * y / (height - 1))
            b = 230 if (x // 6 + y // 4) % 2 else 20
            image.putpixel((x, y), (r, g, b))
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    source = pattern(24, 16)
    cases = {
        "rgb420": (source, {"quality": 90, "subsampling": 2}),
        "rgb444_progressive": (source, {"quality": 95, "subsampling": 0, "progressive": True}),
        "grey": (source.convert("L"), {"quality": 90}),
    }
    for name, (image, options) in cases.items():
        path = os.path.join(args.out, f"{name}.jpg")
        image.save(path, "JPEG", **options)
        Image.open(path).convert("RGB").save(os.path.join(args.out, f"{name}.decoded.png"))


if __name__ == "__main__":
    main()
