#!/usr/bin/env python
r"""Check threestudio's pure-PyTorch LPIPS against the ``lpips`` package (run by hand, in a side environment).

The main environment has no torchvision (and must not get it), so this runs in a separate virtual environment with
torch, torchvision and lpips; it needs only numpy and torch from this repository's code::

    python3.11 -m venv /work/lpips-venv
    /work/lpips-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 lpips
    /work/lpips-venv/bin/python scripts/check_lpips_equality.py \
        [--write-reference tests/fixtures/lpips_alex_reference.json]

It writes seeded *random* weights to both files (torchvision's ``alexnet-owt-7be5be79.pth``, placed in a temporary
torch hub cache where torchvision's ``alexnet(weights=IMAGENET1K_V1)`` finds it, and lpips' v0.1 ``alex.pth``, passed
as ``model_path``), loads them with both implementations, checks that the package really holds the random weights,
and compares the distances on 10 image pairs (256², non-square, down to 31 px; inputs in [-1, 1] and one pair with
``normalize=True``). Exit code 1 when the largest difference exceeds ``--tol`` (1e-6). ``--write-reference`` stores
the seeds, sizes and the package's distances: ``tests/test_lpips_alex.py`` checks the pure implementation against them
in CI (where there is no torchvision).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from threestudio.utils import lpips_alex  # noqa: E402  (after the sys.path line)

WEIGHT_SEED = 20
# (seed, height, width, noise std, normalize): the image pairs of the check and of the stored reference
PAIRS = [
    (1, 256, 256, 0.05, False),
    (2, 256, 256, 0.3, False),
    (3, 256, 256, 1.0, False),
    (4, 192, 256, 0.1, False),
    (5, 256, 144, 0.2, False),
    (6, 64, 64, 0.1, False),
    (7, 31, 31, 0.2, False),
    (8, 48, 80, 0.4, False),
    (9, 100, 37, 0.05, False),
    (10, 120, 160, 0.15, True),
]


def image_pair(seed: int, height: int, width: int, noise: float, normalize: bool):
    """Two (1, 3, H, W) float32 images: uniform noise and a noisier copy; in [0, 1] when ``normalize``, else [-1, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 1.0, (1, 3, height, width))
    b = np.clip(a + rng.normal(0.0, noise, a.shape), 0.0, 1.0)
    if not normalize:
        a, b = 2 * a - 1, 2 * b - 1
    return torch.from_numpy(a).float(), torch.from_numpy(b).float()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-reference", help="write the reference JSON (seeds, sizes, lpips package values)")
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args(argv)

    import lpips
    import torchvision

    tmp = tempfile.mkdtemp(prefix="lpips-check-")
    try:
        weights_dir = os.path.join(tmp, "weights")
        alexnet_path, linear_path = lpips_alex.write_random_weights(weights_dir, WEIGHT_SEED, with_classifier=True)
        hub = os.path.join(tmp, "torch_home", "hub", "checkpoints")
        os.makedirs(hub)
        shutil.copy(alexnet_path, os.path.join(hub, lpips_alex.ALEXNET_FILE))
        os.environ["TORCH_HOME"] = os.path.join(tmp, "torch_home")

        reference = lpips.LPIPS(net="alex", version="0.1", model_path=linear_path, verbose=False).eval()
        ours = lpips_alex.load_weights(*lpips_alex.find_weight_files(weights_dir, download=False))
        # the package must hold the random weights (not ImageNet's, not its own alex.pth)
        assert torch.equal(reference.net.slice1[0].weight, ours.convs[0][0])
        assert torch.equal(reference.net.slice5[0].weight, ours.convs[4][0])  # features.10
        assert torch.equal(reference.lin4.model[1].weight, ours.lins[4])

        rows, worst = [], 0.0
        with torch.no_grad():
            for seed, h, w, noise, normalize in PAIRS:
                a, b = image_pair(seed, h, w, noise, normalize)
                expected = float(reference(a, b, normalize=normalize).reshape(()))
                got = float(lpips_alex.lpips_alex(a, b, ours, normalize=normalize)[0])
                worst = max(worst, abs(got - expected))
                rows.append(dict(seed=seed, height=h, width=w, noise=noise, normalize=normalize, lpips=expected))
                print(f"{h:4d}x{w:<4d} noise {noise:<4} normalize={normalize!s:5}: lpips package {expected:.9f}  "
                      f"ours {got:.9f}  |diff| {abs(got - expected):.2e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from importlib.metadata import version

    versions = dict(torch=torch.__version__, torchvision=torchvision.__version__, lpips=version("lpips"))
    print(f"max |ours - lpips| over {len(PAIRS)} pairs: {worst:.3e} ({versions})")
    if args.write_reference:
        payload = dict(
            what="lpips.LPIPS(net='alex', version='0.1') on seeded random weights (scripts/check_lpips_equality.py)",
            weight_seed=WEIGHT_SEED, versions=versions, max_abs_diff=worst, pairs=rows,
        )
        with open(args.write_reference, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
        print(f"wrote {args.write_reference}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
