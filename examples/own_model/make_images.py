"""Write a folder of images the way a user brings them: PNG photos, a seg label PNG and a depth NPY per image, and a
labels.csv naming them. The pictures come from edgemtl's scene renderer; any folder in this layout works."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from edgemtl.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=False)
    data = load_data("scenes", "train", n=args.images, seed=1)
    images = np.asarray(data.images)  # (N, 3, 64, 64) in [0, 1], before any normalisation
    rows = ["image,seg,depth"]
    for i in range(len(images)):
        photo = np.clip(images[i].transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(args.folder / f"{i:04d}.png")
        Image.fromarray(np.asarray(data.targets["segmentation"][i], dtype=np.uint8)).save(args.folder / f"{i:04d}_seg.png")
        np.save(args.folder / f"{i:04d}_depth.npy", np.asarray(data.targets["depth"][i], dtype=np.float32))
        rows.append(f"{i:04d}.png,{i:04d}_seg.png,{i:04d}_depth.npy")
    (args.folder / "labels.csv").write_text("\n".join(rows) + "\n")
    print(f"{len(images)} images with labels in {args.folder}")


if __name__ == "__main__":
    main()
