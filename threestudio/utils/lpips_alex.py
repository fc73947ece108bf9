"""LPIPS v0.1 with the AlexNet backbone in plain PyTorch: what ``lpips.LPIPS(net="alex")`` computes.

No torchvision and no ``lpips`` import: the network is five ``F.conv2d`` layers whose weights are read from the two
files those packages use,

- torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth`` (only its ``features.*`` tensors are used), and
- lpips' v0.1 linear layers, ``alex.pth`` (``lin0.model.1.weight`` ... ``lin4.model.1.weight``, (1, C, 1, 1)).

The computation (Zhang et al. 2018, ``lpips`` 0.1.x with ``version="0.1"``, ``lpips=True``, ``spatial=False``):

1. ``x`` in [-1, 1] (``normalize=True``: ``x`` in [0, 1], mapped by ``2x - 1``) is scaled by lpips' ScalingLayer,
   ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188) and scale (0.458, 0.448, 0.450);
2. AlexNet's ReLU outputs after conv1 ... conv5 (3×3 stride-2 max-pools before conv2 and conv3);
3. each feature map is divided by its channel-vector L2 norm (+1e-10) per pixel; squared difference of the two;
4. the layer's 1×1 linear layer (no bias), then the mean over the pixels; the distance is the sum over the 5 layers.

Images smaller than 31 px on either side leave nothing for the second max-pool: :func:`lpips_alex` raises
``ValueError`` for them (as the original would fail inside AlexNet).

Weight files are found by :func:`find_weight_files`: ``weights_dir`` (``--lpips-weights DIR``) or the
``THREESTUDIO_LPIPS_DIR`` environment variable (only there: a folder named explicitly is never bypassed), else the
torch hub cache (``torch.hub.get_dir()/checkpoints``, where torchvision keeps its AlexNet; lpips' file is kept there
as ``lpips_v0.1_alex.pth``, or read from an installed ``lpips`` package's folder without importing it), else they are
downloaded once into the hub cache with a one-line notice. Both files are read with ``torch.load(weights_only=True)``
(:func:`zeronvs_diffusion.torch_load.load_torch_file`): nothing in them can run code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_SHA256_PREFIX = "7be5be79"  # torchvision's file name carries the first digits of its SHA-256
LINEAR_FILE = "alex.pth"
LINEAR_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"
HUB_LINEAR_FILE = "lpips_v0.1_alex.pth"  # lpips' alex.pth under its name in the hub cache
ENV_DIR = "THREESTUDIO_LPIPS_DIR"

# torchvision AlexNet `features` index of conv1..conv5, its stride and padding; a 3×3/2 max-pool precedes conv2, conv3
ALEXNET_CONVS = ((0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1))
ALEXNET_SHAPES = ((64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3))
POOL_BEFORE = (False, True, True, False, False)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 31  # smallest side AlexNet's second max-pool accepts


class LpipsUnavailable(Exception):
    """The weight files cannot be had (missing, unreadable, or the download failed); the message says why."""


@dataclass(frozen=True)
class LpipsWeights:
    """AlexNet conv1..conv5 ``(weight, bias)`` and the five v0.1 linear layers (1, C_k, 1, 1)."""

    convs: Tuple[Tuple[Tensor, Tensor], ...]
    lins: Tuple[Tensor, ...]

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "LpipsWeights":
        return LpipsWeights(
            tuple((w.to(device, dtype), b.to(device, dtype)) for w, b in self.convs),
            tuple(lin.to(device, dtype) for lin in self.lins),
        )


def alexnet_features(x: Tensor, weights: LpipsWeights) -> List[Tensor]:
    """The ReLU outputs of AlexNet's five conv layers for ``x`` (N, 3, H, W) (already scaled)."""
    feats = []
    for (w, b), (_, stride, padding), pool in zip(weights.convs, ALEXNET_CONVS, POOL_BEFORE):
        if pool:
            x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.relu(F.conv2d(x, w, b, stride=stride, padding=padding))
        feats.append(x)
    return feats


def _unit_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


def lpips_alex(img0: Tensor, img1: Tensor, weights: LpipsWeights, normalize: bool = False) -> Tensor:
    """LPIPS distance (N,) between ``img0`` and ``img1`` (N, 3, H, W), in [-1, 1] (``normalize``: in [0, 1]).

    ``weights`` must be on the images' device and dtype (:meth:`LpipsWeights.to`).
    """
    if img0.shape != img1.shape or img0.ndim != 4 or img0.shape[1] != 3:
        raise ValueError(f"LPIPS needs two (N, 3, H, W) batches of one shape; got {tuple(img0.shape)}, "
                         f"{tuple(img1.shape)}")
    if min(img0.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}×{MIN_SIZE} px; got "
                         f"{img0.shape[-2]}×{img0.shape[-1]}")
    shift = torch.tensor(SHIFT, device=img0.device, dtype=img0.dtype)[None, :, None, None]
    scale = torch.tensor(SCALE, device=img0.device, dtype=img0.dtype)[None, :, None, None]
    if normalize:
        img0, img1 = 2 * img0 - 1, 2 * img1 - 1
    feats0 = alexnet_features((img0 - shift) / scale, weights)
    feats1 = alexnet_features((img1 - shift) / scale, weights)
    total = torch.zeros(img0.shape[0], device=img0.device, dtype=img0.dtype)
    for f0, f1, lin in zip(feats0, feats1, weights.lins):
        diff = (_unit_channels(f0) - _unit_channels(f1)) ** 2
        total = total + F.conv2d(diff, lin).mean(dim=(2, 3))[:, 0]
    return total


def weights_from_state_dicts(alexnet: dict, linear: dict, source: str = "LPIPS weights") -> LpipsWeights:
    """Check and pick the tensors LPIPS uses from torchvision's AlexNet and lpips' v0.1 state dicts."""

    def tensor(sd: dict, key: str, shape: Tuple[int, ...], kind: str) -> Tensor:
        value = sd.get(key)
        if not isinstance(value, Tensor):
            raise LpipsUnavailable(f"{source} has no tensor {key!r}: not {kind} weights")
        if tuple(value.shape) != shape:
            raise LpipsUnavailable(f"{source}: {key} has shape {tuple(value.shape)}, expected {shape}")
        if not value.is_floating_point():
            raise LpipsUnavailable(f"{source}: {key} holds {value.dtype} values, expected floats: not {kind} weights")
        if not bool(torch.isfinite(value).all()):
            raise LpipsUnavailable(f"{source}: {key} holds NaN or inf")
        return value.float()

    alex, lin = "torchvision AlexNet", "lpips v0.1 alex.pth"
    convs = tuple(
        (tensor(alexnet, f"features.{i}.weight", shape, alex), tensor(alexnet, f"features.{i}.bias", shape[:1], alex))
        for (i, _, _), shape in zip(ALEXNET_CONVS, ALEXNET_SHAPES)
    )
    lins = tuple(
        tensor(linear, f"lin{k}.model.1.weight", (1, shape[0], 1, 1), lin) for k, shape in enumerate(ALEXNET_SHAPES)
    )
    for k, weight in enumerate(lins):  # lpips trains them clamped at 0: a negative one makes distances negative
        if bool((weight < 0).any()):
            raise LpipsUnavailable(f"{source}: lin{k}.model.1.weight has negative values (lpips' linear weights are "
                                   "non-negative): not lpips v0.1 alex.pth weights")
    return LpipsWeights(convs, lins)


def load_weights(alexnet_path: str, linear_path: str) -> LpipsWeights:
    """Read the two weight files safely (``weights_only``); :class:`LpipsUnavailable` when they do not fit."""
    from zeronvs_diffusion.errors import UserError
    from zeronvs_diffusion.torch_load import load_torch_file

    def read(path: str, what: str) -> dict:
        try:
            sd = load_torch_file(path, what=what, mmap=False)
        except UserError as e:
            raise LpipsUnavailable(str(e)) from None
        if not isinstance(sd, dict):
            raise LpipsUnavailable(f"{what} {path} holds a {type(sd).__name__}, not a state dict")
        return sd

    alexnet = read(alexnet_path, "LPIPS AlexNet weights")
    linear = read(linear_path, "LPIPS v0.1 linear weights")
    return weights_from_state_dicts(alexnet, linear, f"{alexnet_path} / {linear_path}")


def _hub_checkpoints() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _installed_lpips_linear() -> Optional[str]:
    """lpips' own ``weights/v0.1/alex.pth`` when the package is installed (found without importing it)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "weights", "v0.1", LINEAR_FILE)
    return path if os.path.isfile(path) else None


def _download(url: str, path: str, sha256_prefix: Optional[str]) -> None:
    logger.warning("LPIPS: downloading %s once into %s", url, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, path, hash_prefix=sha256_prefix, progress=False)
    except Exception as e:  # no network, HTTP error, hash mismatch
        raise LpipsUnavailable(
            f"{os.path.basename(path)} is not in {os.path.dirname(path)} and downloading {url} failed ({e}); "
            f"put {ALEXNET_FILE} and {LINEAR_FILE} in a folder and pass --lpips-weights DIR or set {ENV_DIR}"
        ) from None


def find_weight_files(weights_dir: Optional[str] = None, download: bool = True) -> Tuple[str, str]:
    """Paths of (AlexNet, v0.1 linear) weights; see the module docstring for the search order.

    Raises:
        LpipsUnavailable: an explicit folder lacks a file, or the hub cache lacks one and ``download`` is False or
            the download failed.
    """
    weights_dir = weights_dir or os.environ.get(ENV_DIR) or None
    if weights_dir:
        paths = (os.path.join(weights_dir, ALEXNET_FILE), os.path.join(weights_dir, LINEAR_FILE))
        missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
        if missing:
            source = "--lpips-weights / " + ENV_DIR
            raise LpipsUnavailable(f"{' and '.join(missing)} not found in {weights_dir} ({source})")
        return paths
    hub = _hub_checkpoints()
    alexnet = os.path.join(hub, ALEXNET_FILE)
    linear = os.path.join(hub, HUB_LINEAR_FILE)
    if not os.path.isfile(linear):
        linear = _installed_lpips_linear() or linear
    for path, url, sha in ((alexnet, ALEXNET_URL, ALEXNET_SHA256_PREFIX), (linear, LINEAR_URL, None)):
        if os.path.isfile(path):
            continue
        if not download:
            raise LpipsUnavailable(f"{os.path.basename(path)} is not in the torch hub cache {hub}; downloads are off")
        _download(url, path, sha)
    return alexnet, linear


def random_state_dicts(seed: int, with_classifier: bool = False) -> Tuple[dict, dict]:
    """Seeded random (AlexNet, v0.1 linear) state dicts in the two files' layouts, for tests and the equality check.

    Conv weights ~ N(0, 2 / fan_in), biases ~ U(-0.1, 0.1), linear weights ~ U(0, 1) (lpips' are non-negative);
    drawn with numpy's PCG64 so they are the same on every machine. ``with_classifier`` adds torchvision's classifier
    tensors (zeros; LPIPS does not use them) so that ``torchvision.models.alexnet`` loads the file strictly.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    alexnet: dict = {}
    for (i, _, _), shape in zip(ALEXNET_CONVS, ALEXNET_SHAPES):
        fan_in = shape[1] * shape[2] * shape[3]
        alexnet[f"features.{i}.weight"] = torch.from_numpy(rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)).float()
        alexnet[f"features.{i}.bias"] = torch.from_numpy(rng.uniform(-0.1, 0.1, shape[:1])).float()
    if with_classifier:
        for i, (out_f, in_f) in ((1, (4096, 9216)), (4, (4096, 4096)), (6, (1000, 4096))):
            alexnet[f"classifier.{i}.weight"] = torch.zeros(out_f, in_f)
            alexnet[f"classifier.{i}.bias"] = torch.zeros(out_f)
    linear = {
        f"lin{k}.model.1.weight": torch.from_numpy(rng.uniform(0.0, 1.0, (1, shape[0], 1, 1))).float()
        for k, shape in enumerate(ALEXNET_SHAPES)
    }
    return alexnet, linear


def write_random_weights(folder: str, seed: int, with_classifier: bool = False) -> Tuple[str, str]:
    """Write :func:`random_state_dicts` as ``folder/alexnet-owt-7be5be79.pth`` and ``folder/alex.pth``."""
    alexnet, linear = random_state_dicts(seed, with_classifier)
    os.makedirs(folder, exist_ok=True)
    paths = (os.path.join(folder, ALEXNET_FILE), os.path.join(folder, LINEAR_FILE))
    torch.save(alexnet, paths[0])
    torch.save(linear, paths[1])
    return paths
