#!/usr/bin/env python3
"""Build the handwritten-digit image-caption set committed under datasets/images/digits/.

Input: the scikit-learn wheel from PyPI, which bundles the UCI "Optical
Recognition of Handwritten Digits" test set as sklearn/datasets/data/digits.csv.gz
(1,797 rows: 64 pixel values 0..16 of an 8x8 image, row-major, then the label).
Obtained with:

    pip download scikit-learn --no-deps --only-binary=:all: -d /tmp/skl
    python3 scripts/datasets/make_digits.py \
        --wheel /tmp/skl/scikit_learn-1.9.1-*.whl --out datasets/images/digits

Standard library only (zipfile, gzip, zlib, struct); deterministic. For each
of the first 700 rows it writes png/NNNN.png (NNNN = row index): a 32x32 8-bit
RGB image, the 8x8 grid upscaled x4 by nearest neighbour, grey level
v * 255 // 16 (white digit on black, as in the data). Rows 0..599 become
captions-train.jsonl and rows 600..699 captions-eval.jsonl, one record a line:

    {"image": "png/0000.png", "caption": "A handwritten digit zero."}

with the image path relative to the JSONL file. It also writes COPYING, the
BSD-3-Clause text of the wheel's dist-info/licenses/COPYING (the part before the
notices for the bundled GCC runtime, which is not shipped here).
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import struct
import zipfile
import zlib

CSV = "sklearn/datasets/data/digits.csv.gz"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SCALE = 4
SIDE = 8 * SCALE


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_rgb(side, grey_rows):
    """A `side` x `side` 8-bit RGB PNG whose pixels are the grey levels of `grey_rows`."""
    raw = bytearray()
    for row in grey_rows:
        raw.append(0)  # filter type None
        for g in row:
            raw += bytes((g, g, g))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + png_chunk(b"IEND", b"")
    )


def digit_png(pixels):
    """The 8x8 grid of values 0..16, upscaled to 32x32 by nearest neighbour."""
    grey = [v * 255 // 16 for v in pixels]
    rows = []
    for y in range(SIDE):
        src = grey[(y // SCALE) * 8:(y // SCALE) * 8 + 8]
        rows.append([src[x // SCALE] for x in range(SIDE)])
    return png_rgb(SIDE, rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", required=True, help="scikit-learn wheel (a glob is accepted)")
    ap.add_argument("--out", default="datasets/images/digits")
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--eval", type=int, default=100)
    args = ap.parse_args()

    wheels = sorted(glob.glob(args.wheel))
    if len(wheels) != 1:
        raise SystemExit(f"--wheel {args.wheel!r} matches {len(wheels)} files, expected 1")
    wheel = wheels[0]
    with open(wheel, "rb") as f:
        wheel_sha = hashlib.sha256(f.read()).hexdigest()
    with zipfile.ZipFile(wheel) as z:
        packed = z.read(CSV)
        copying = [n for n in z.namelist() if n.endswith(".dist-info/licenses/COPYING")]
        if len(copying) != 1:
            raise SystemExit(f"expected one dist-info/licenses/COPYING, found {copying}")
        licence = z.read(copying[0]).decode("utf-8")

    rows = []
    for line in gzip.decompress(packed).decode("ascii").splitlines():
        values = [int(float(v)) for v in line.split(",")]
        if len(values) != 65 or not all(0 <= v <= 16 for v in values[:64]) or not 0 <= values[64] <= 9:
            raise SystemExit(f"unexpected row in {CSV}: {line!r}")
        rows.append((values[:64], values[64]))
    used = args.train + args.eval
    if len(rows) < used:
        raise SystemExit(f"{CSV} has {len(rows)} rows, fewer than {used}")

    os.makedirs(os.path.join(args.out, "png"), exist_ok=True)
    splits = {"captions-train.jsonl": range(0, args.train), "captions-eval.jsonl": range(args.train, used)}
    for name, indices in splits.items():
        lines = []
        for i in indices:
            pixels, label = rows[i]
            image = f"png/{i:04d}.png"
            with open(os.path.join(args.out, image), "wb") as f:
                f.write(digit_png(pixels))
            record = {"image": image, "caption": f"A handwritten digit {WORDS[label]}."}
            lines.append(json.dumps(record) + "\n")
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)

    bsd = licence.split("\n----\n", 1)[0].rstrip("\n") + "\n"
    with open(os.path.join(args.out, "COPYING"), "w", encoding="utf-8", newline="\n") as f:
        f.write(bsd)

    print(f"wheel={os.path.basename(wheel)} sha256={wheel_sha}")
    print(f"{CSV} sha256={hashlib.sha256(packed).hexdigest()} rows={len(rows)}")
    print(f"train={args.train} eval={args.eval} pngs={used}")


if __name__ == "__main__":
    main()
