"""A small detection dataset of real image content, in YOLO form: scikit-learn's handwritten
digits (10 classes) pasted onto crops of scikit-image's photographs.

Both packages ship their data, so the set is built offline and is the same on every machine
for a given seed. Train and val use disjoint digit samples and disjoint photographs, so the val
split measures generalisation to unseen handwriting on unseen backgrounds. About one image in
ten has no digit (a background image).

    python -m benchmarks.digits --out data/digits     # writes data/digits/data.yaml

It needs scikit-learn and scikit-image (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Photographs that scikit-image ships (no download); val gets its own.
TRAIN_PHOTOS = [
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "page",
    "horse",
    "immunohistochemistry",
    "text",
    "clock",
    "grass",
    "gravel",
]
VAL_PHOTOS = ["hubble_deep_field", "retina", "brick", "cell", "logo", "colorwheel"]


def _photos(names: list[str]) -> list[np.ndarray]:
    """The photographs as RGB uint8."""
    import skimage.data

    out = []
    for name in names:
        im = getattr(skimage.data, name)()
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(im[:, :, :3]).astype(np.uint8))
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(int)


def _background(photo: np.ndarray, rng: random.Random, size: tuple[int, int]) -> np.ndarray:
    """A random crop of the photo (a quarter to all of it), resized to (h, w) and flipped."""
    ph, pw = photo.shape[:2]
    h, w = size
    scale = rng.uniform(0.5, 1.0)
    ch = max(16, int(ph * scale))
    cw = max(16, min(pw, int(ch * w / h)))
    y, x = rng.randint(0, ph - ch), rng.randint(0, pw - cw)
    crop = cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop


def _paste(
    img: np.ndarray, digit: np.ndarray, box: tuple[int, int, int, int], color: np.ndarray
) -> None:
    """Alpha-blends the (upscaled) digit into img at box = (x1, y1, x2, y2), in `color`."""
    x1, y1, x2, y2 = box
    alpha = cv2.resize(digit, (x2 - x1, y2 - y1), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    region = img[y1:y2, x1:x2].astype(np.float32)
    region = region * (1 - alpha[..., None]) + color[None, None, :] * alpha[..., None]
    img[y1:y2, x1:x2] = region.clip(0, 255).astype(np.uint8)


def _ink_box(digit: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, ...] | None:
    """The tight box of the digit's ink (alpha > 0.25) inside its paste box, or None."""
    x1, y1, x2, y2 = box
    alpha = cv2.resize(digit, (x2 - x1, y2 - y1), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.nonzero(alpha > 0.25)
    if len(xs) == 0:
        return None
    return (x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1)


def _overlap(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / max(1, min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])))


def write_split(
    out: Path,
    split: str,
    num: int,
    photos: list[np.ndarray],
    digits: np.ndarray,
    labels: np.ndarray,
    rng: random.Random,
) -> int:
    """Writes `num` images and YOLO label files of one split; returns the number of boxes."""
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(num):
        h, w = rng.choice([(320, 320), (240, 320), (320, 240), (288, 384)])
        img = _background(rng.choice(photos), rng, (h, w))
        boxes: list[tuple] = []
        lines = []
        count = 0 if rng.random() < 0.1 else rng.randint(1, 6)
        for _ in range(count * 4):  # tries
            if len(boxes) == count:
                break
            side = int(rng.uniform(20, 110) if rng.random() < 0.8 else rng.uniform(110, 180))
            side = min(side, h - 2, w - 2)
            bh, bw = side, int(side * rng.uniform(0.7, 1.0))
            x1, y1 = rng.randint(0, w - bw), rng.randint(0, h - bh)
            box = (x1, y1, x1 + bw, y1 + bh)
            if any(_overlap(box, b) > 0.3 for b in boxes):
                continue
            k = rng.randrange(len(digits))
            ink = _ink_box(digits[k], box)
            if ink is None:
                continue
            mean = img[y1 : y1 + bh, x1 : x1 + bw].reshape(-1, 3).mean(0)
            # A colour that stands out from the local background, but not always by much.
            color = np.array([rng.uniform(0, 255) for _ in range(3)], dtype=np.float32)
            if np.abs(color - mean).sum() < 150:
                color = 255 - mean + np.array([rng.uniform(-40, 40) for _ in range(3)])
            _paste(img, digits[k], box, color.astype(np.float32))
            boxes.append(box)
            cx, cy = (ink[0] + ink[2]) / 2 / w, (ink[1] + ink[3]) / 2 / h
            bw_n, bh_n = (ink[2] - ink[0]) / w, (ink[3] - ink[1]) / h
            lines.append(f"{labels[k]} {cx:.6f} {cy:.6f} {bw_n:.6f} {bh_n:.6f}")
        name = f"{split}_{i:05d}"
        cv2.imwrite(
            str(out / "images" / split / f"{name}.jpg"),
            img[:, :, ::-1],
            [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
        (out / "labels" / split / f"{name}.txt").write_text("".join(x + "\n" for x in lines))
        total += len(lines)
    return total


def write_digits_dataset(
    out: str | Path, num_train: int = 300, num_val: int = 100, seed: int = 0
) -> Path:
    """Writes the dataset under `out` and returns its data.yaml."""
    out = Path(out)
    images, labels = _digits()
    order = random.Random(seed).sample(range(len(images)), len(images))
    cut = int(0.7 * len(order))
    tr, va = order[:cut], order[cut:]
    n_tr = write_split(
        out,
        "train",
        num_train,
        _photos(TRAIN_PHOTOS),
        images[tr],
        labels[tr],
        random.Random(seed + 1),
    )
    n_va = write_split(
        out, "val", num_val, _photos(VAL_PHOTOS), images[va], labels[va], random.Random(seed + 2)
    )
    yaml = out / "data.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    yaml.write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    print(f"{out}: {num_train} train images ({n_tr} digits), {num_val} val ({n_va})")
    return yaml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/digits")
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    write_digits_dataset(a.out, a.num_train, a.num_val, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
