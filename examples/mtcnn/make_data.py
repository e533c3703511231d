"""Write faces.npz from the LFW subset scikit-image ships (data/lfw_subset.npy: 100 faces, then 100 non-face patches,
25 x 25 grey): labels face=1 / 0 as its documentation says; the originals alternate val / test, mirrored copies
are the training (calibration, QAT) split. Compile with `--resize` (25 x 25 -> the spec's 48 x 48)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install {package.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0]) / relative


def write_faces(path: Path) -> Path:
    lfw = np.load(package_file("skimage", "data/lfw_subset.npy"))
    images = np.round(lfw * 255).astype(np.uint8)[:, None].repeat(3, axis=1)  # grey -> RGB
    face = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)
    np.savez(path, images=np.concatenate([images, images[..., ::-1]]), face=np.r_[face, face],
             split=np.array(["val", "test"] * 100 + ["train"] * 200))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=Path("faces.npz"))
    print(write_faces(parser.parse_args().output))


if __name__ == "__main__":
    main()
