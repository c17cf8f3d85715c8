"""Generate the example line-drawing dataset (3 tiny PNG line drawings + captions.csv), stdlib only.

    python example_inputs/line2product_dataset/make_dataset.py [OUT_DIR]

Ids are the file names (mug_001.png <-> row id mug_001), never positions.
"""
import csv
import math
import os
import struct
import sys
import zlib


def write_png(path, pixels):
    """pixels: list of rows of 0..255 grey values."""
    h, w = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(r) for r in pixels)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def canvas(size):
    return [[255] * size for _ in range(size)]


def line(img, x0, y0, x1, y1):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for i in range(n + 1):
        t = i / n
        x, y = int(round(x0 + (x1 - x0) * t)), int(round(y0 + (y1 - y0) * t))
        if 0 <= y < len(img) and 0 <= x < len(img):
            img[y][x] = 0


def mug(size=64):
    img = canvas(size)
    for a, b in [((16, 14), (16, 52)), ((16, 52), (42, 52)), ((42, 52), (42, 14)), ((16, 14), (42, 14))]:
        line(img, *a, *b)
    for k in range(24):  # handle
        t = math.pi * (k / 23) - math.pi / 2
        line(img, 42 + 9 * math.cos(t), 33 + 9 * math.sin(t), 42 + 9 * math.cos(t), 33 + 9 * math.sin(t))
    return img


def bottle(size=64):
    img = canvas(size)
    pts = [(26, 6), (38, 6), (38, 18), (46, 26), (46, 58), (18, 58), (18, 26), (26, 18), (26, 6)]
    for a, b in zip(pts, pts[1:]):
        line(img, *a, *b)
    return img


def lamp(size=64):
    img = canvas(size)
    pts = [(20, 10), (44, 10), (52, 30), (12, 30), (20, 10)]
    for a, b in zip(pts, pts[1:]):
        line(img, *a, *b)
    line(img, 32, 30, 32, 54)
    line(img, 20, 56, 44, 56)
    return img


ROWS = [
    ("mug_001", mug, "a matte white ceramic mug, studio product photo, soft shadow", 11),
    ("bottle_002", bottle, "a frosted glass perfume bottle, studio product photo", 22),
    ("lamp_003", lamp, "a brass desk lamp with a linen shade, studio product photo", 33),
]


def main(out=None):
    out = out or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    for rid, fn, _, _ in ROWS:
        write_png(os.path.join(out, f"{rid}.png"), fn())
    with open(os.path.join(out, "captions.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "seed", "negative"])
        for rid, _, prompt, seed in ROWS:
            w.writerow([rid, prompt, seed, "blurry, text, watermark"])
    return out


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else None))
