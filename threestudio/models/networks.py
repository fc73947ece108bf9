"""Encodings and MLPs: a pure-PyTorch multiresolution hash grid and MLP, or tiny-cuda-nn when available.

Configs use tiny-cuda-nn's field names (``otype: HashGrid``, ``n_levels``, ``log2_hashmap_size``, ...), so a
threestudio/ZeroNVS config works unchanged. :func:`get_encoding` and :func:`get_mlp` take the fast-path mode
(``"auto"``/``"off"``, the system's ``fast_paths``) and return tiny-cuda-nn modules only when
:func:`threestudio.utils.fast_paths.use_tcnn` says so (CUDA + ``tinycudann`` importable + mode auto); otherwise the
PyTorch modules below, which are the reference the tests check. In mode auto on CUDA, :class:`HashGrid` runs its
Triton kernels (:mod:`threestudio.kernels.hash_grid`) for inputs that need no gradient themselves: the encoding, its
Jacobian (:meth:`HashGrid.forward_with_jacobian`, explicit analytic normals) and their table gradients. Inputs that
require a gradient (autograd analytic normals differentiate the grid twice) use the reference.

:class:`HashGrid` follows instant-NGP: level ``l`` has scale ``base_resolution · per_level_scale^l − 1`` (computed in
float32 as tiny-cuda-nn does, :func:`tcnn_grid_scale`) and
``ceil(scale) + 1`` vertices per axis; a level whose dense grid fits in ``2^log2_hashmap_size`` entries is indexed
densely, larger levels use the spatial hash ``xor_d(x_d · π_d) mod T`` with the instant-NGP primes. Features are
interpolated (d-)linearly between the ``2^d`` cell corners, so the output is differentiable w.r.t. both the table and
the input coordinates (to any order: analytic normals backpropagate through it).

Memory: all levels are evaluated at once with a single gather, then interpolated by successive lerps. For the
table gradient the autograd graph keeps, per input point, the int64 corner indices (``L·2^d·8`` bytes: 1 KiB for
the paper grid, 16 levels in 3-D); when the input needs gradients too (analytic normals) it also keeps the corner
feature differences and the second graph, about 3.4 KiB per sample in all (docs/PERFORMANCE.md). The renderer's
``grad_checkpoint_chunk_size`` therefore evaluates the fields in chunks whose graphs are rebuilt in the backward
(:mod:`threestudio.utils.recompute`).
"""

from __future__ import annotations

import functools
import logging
import math
import struct
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio.utils.config import config_to_primitive
from threestudio.utils.errors import ConfigError
from threestudio.utils.fast_paths import parse_fast_paths, triton_kernels, use_tcnn

logger = logging.getLogger(__name__)

# instant-NGP / tiny-cuda-nn spatial-hash primes (first coordinate unscaled)
_HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): keeps density gradients finite (torch-ngp's trunc_exp)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_output * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp with a gradient clamped at exp(15); differentiable twice (its backward is plain torch ops)."""
    return _TruncExp.apply(x)


_ACTIVATIONS: Dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "exp": torch.exp,
    "trunc_exp": trunc_exp,
    # tiny-cuda-nn style density activation used by nerfacc's proposal networks
    "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
}


# derivative of each activation as a function of its input (trunc_exp: the clamped gradient of its backward); used by
# the explicit input gradients below, which exist only for these
_ACTIVATION_DERIVATIVES: Dict[str, Callable[[Tensor], Tensor]] = {
    "none": torch.ones_like,
    "relu": lambda x: (x > 0).to(x.dtype),
    "softplus": torch.sigmoid,
    "exp": torch.exp,
    "trunc_exp": lambda x: torch.exp(x.clamp(max=15.0)),
}


def activations_with_derivative() -> List[str]:
    """Names of the activations whose derivative is known (what the explicit input gradients support)."""
    return sorted(_ACTIVATION_DERIVATIVES)


def get_activation_derivative(name: Optional[str]) -> Optional[Callable[[Tensor], Tensor]]:
    """d activation / d input for ``name`` as a function of the input, or None where it is not provided."""
    return _ACTIVATION_DERIVATIVES.get("none" if name is None else str(name).lower())


def get_activation(name: Optional[str]) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name`` (case-insensitive; None or "none" = identity)."""
    key = "none" if name is None else str(name).lower()
    if key not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[key]


def autocast_off(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a field method ``method(self, x, ...)`` with autocast disabled on ``x``'s device: the fields are fp32
    under any autocast (mixed precision), as in ZeroNVS, whose MLPs disable autocast and whose tiny-cuda-nn grid
    is fp32. Autograd through the method (analytic normals' double backward) stays fp32 too. Devices without
    autocast (``meta``, for tracing) run the method as it is."""

    @functools.wraps(method)
    def fp32_method(self: Any, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if not torch.amp.is_autocast_available(x.device.type):
            return method(self, x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return method(self, x, *args, **kwargs)

    return fp32_method


def _f32(value: float) -> float:
    """``value`` rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", value))[0]


def tcnn_grid_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """Scale of hash-grid level ``level`` as tiny-cuda-nn computes it, in float32:
    ``exp2f(level · log2f(per_level_scale)) · base_resolution − 1`` (level 15 of the paper grid: 4094.9985, not the
    4095 of exact arithmetic). Each float32 operation is rounded from the correctly rounded double result."""
    log2_scale = _f32(math.log2(_f32(per_level_scale)))
    power = _f32(2.0 ** _f32(level * log2_scale))
    return _f32(_f32(power * base_resolution) - 1.0)


class HashGrid(nn.Module):
    """Multiresolution hash encoding (instant-NGP), pure PyTorch.

    Input ``(..., n_input_dims)`` in [0, 1] (clamped), output ``(..., n_levels · n_features_per_level)`` float32.
    The trainable table is the flat parameter ``params`` (like tiny-cuda-nn), level ``l`` occupying rows
    ``offsets[l]:offsets[l+1]`` of ``params.view(-1, n_features_per_level)``. ``fast_paths`` ``"auto"`` uses the
    Triton kernels where they can run (module docstring), ``"off"`` always the reference below.
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        init_scale: float = 1e-4,
        fast_paths: str = "auto",
    ) -> None:
        super().__init__()
        self.fast_paths = parse_fast_paths(fast_paths, "HashGrid fast_paths")
        if not 1 <= n_input_dims <= len(_HASH_PRIMES):
            raise ConfigError(f"HashGrid n_input_dims must be in 1..{len(_HASH_PRIMES)}, got {n_input_dims}")
        if n_levels < 1 or n_features_per_level < 1 or base_resolution < 1:
            raise ConfigError("HashGrid n_levels, n_features_per_level and base_resolution must be >= 1")
        self.n_input_dims = n_input_dims
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.n_output_dims = n_levels * n_features_per_level
        hashmap_size = 2**log2_hashmap_size

        scales, resolutions, sizes, dense = [], [], [], []
        for level in range(n_levels):
            scale = tcnn_grid_scale(level, per_level_scale, base_resolution)
            resolution = int(math.ceil(scale)) + 1
            dense_size = resolution**n_input_dims
            is_dense = dense_size <= hashmap_size
            # tcnn aligns every level to 8 entries (hashed levels stay powers of two)
            size = (dense_size + 7) // 8 * 8 if is_dense else max(hashmap_size, 8)
            scales.append(scale)
            resolutions.append(resolution)
            sizes.append(size)
            dense.append(is_dense)
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.level_sizes = sizes
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("level_offsets", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("level_sizes_t", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("is_dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        # dense row of vertex v in level l: Σ_d v_d · resolution_l^d
        strides = [[r**d for d in range(n_input_dims)] for r in resolutions]
        self.register_buffer("axis_strides", torch.tensor(strides, dtype=torch.int64), persistent=False)
        self.params = nn.Parameter(torch.empty(offsets[-1] * n_features_per_level))
        nn.init.uniform_(self.params, -init_scale, init_scale)

    def corner_indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows (N, L, 2^d) int64 of the cell corners around points x (N, d) in [0, 1], and the position
        inside the cell (N, L, d) in [0, 1) (differentiable w.r.t. x). Corner c has bit k of c set when it is the
        upper vertex along axis k."""
        pos = x[:, None, :] * self.scales[None, :, None].to(x.dtype) + 0.5  # (N, L, d)
        cell = torch.floor(pos)
        frac = pos - cell  # the gradient reaches x through frac
        cell = cell.long()
        max_vertex = (self.resolutions - 1)[None, :, None]  # (1, L, 1)
        lower_upper = torch.arange(2, device=x.device)
        dense_index = hash_index = None
        # per axis only the 2 vertex coordinates (N, L, 2); combined into the 2^d corners by broadcasting, the
        # highest axis first so that it ends up as the corners' top bit
        for d in reversed(range(self.n_input_dims)):
            vertex = torch.minimum(cell[..., d : d + 1] + lower_upper, max_vertex)  # (N, L, 2)
            dense_d = vertex * self.axis_strides[None, :, d : d + 1]
            hash_d = vertex * _HASH_PRIMES[d]
            if dense_index is None:
                dense_index, hash_index = dense_d, hash_d
            else:
                dense_index = (dense_index[..., :, None] + dense_d[..., None, :]).flatten(-2)
                hash_index = (hash_index[..., :, None] ^ hash_d[..., None, :]).flatten(-2)
        # hashed levels have a power-of-two size: the modulo is a mask
        hashed = hash_index & (self.level_sizes_t - 1)[None, :, None]
        level_index = torch.where(self.is_dense[None, :, None], dense_index, hashed)
        return level_index + self.level_offsets[None, :, None], frac

    def _gather_corners(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features (N, L, 2^d, F) of the cell corners around points x (N, d) in [0, 1] and the positions in the
        cells (N, L, d): one gather for every level and corner (int64 rows: its backward is ~3x faster on CPU than
        with int32)."""
        index, frac = self.corner_indices(x)
        n, n_levels, n_corners = index.shape
        table = self.params.view(-1, self.n_features_per_level).to(x.dtype)
        corners = table.index_select(0, index.reshape(-1))
        return corners.view(n, n_levels, n_corners, self.n_features_per_level), frac

    def _corner_weights(self, frac: Tensor, slope_axis: Optional[int] = None) -> Tensor:
        """d-linear weights (N, L, 2^d) of the cell corners from the positions in the cell frac (N, L, d), built
        like the corner indices (the highest axis first, so that it ends up as the corners' top bit). With
        ``slope_axis`` j: their derivatives w.r.t. x_j (the lerp along j replaced by ±scale)."""
        weights = None
        for d in reversed(range(self.n_input_dims)):
            if d == slope_axis:
                scale = self.scales.to(frac.dtype)[None, :]
                w = torch.stack([-scale, scale], dim=-1).expand(frac.shape[0], -1, -1)
            else:
                w = torch.stack([1.0 - frac[..., d], frac[..., d]], dim=-1)  # (N, L, 2): lower, upper vertex
            weights = w if weights is None else (weights[..., :, None] * w[..., None, :]).flatten(-2)
        return weights

    def _triton_kernels(self, x: Tensor):
        """The Triton kernel module when it may encode x (N, d) here (see the module docstring), else None."""
        if self.fast_paths == "off" or x.requires_grad:
            return None
        kernels = triton_kernels("hash_grid", self.fast_paths, x.device)
        return kernels if kernels is not None and kernels.supports(self, x) else None

    @autocast_off
    def forward(self, x: Tensor) -> Tensor:
        """Encode x (..., n_input_dims) in [0, 1] → (..., n_levels · n_features_per_level)."""
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"HashGrid expects (..., {self.n_input_dims}) inputs, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        kernels = self._triton_kernels(x)
        if kernels is not None:
            return kernels.encode(self, x.reshape(-1, self.n_input_dims)).reshape(*lead, self.n_output_dims)
        feats, frac = self._gather_corners(x.reshape(-1, self.n_input_dims).clamp(0.0, 1.0))
        # d-linear interpolation as successive lerps, the highest axis (the corners' top bit) first
        for d in reversed(range(self.n_input_dims)):
            half = feats.shape[2] // 2
            lower, upper = feats[:, :, :half], feats[:, :, half:]
            feats = lower + (upper - lower) * frac[:, :, d, None, None]
        return feats.reshape(*lead, self.n_output_dims)

    @autocast_off
    def forward_with_jacobian(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoding (N, n_output_dims) and its Jacobian w.r.t. the input (N, n_output_dims, n_input_dims), x (N, d)
        in [0, 1], from one gather; both differentiable w.r.t. the table with first-order autograd only.

        ∂/∂x_j replaces the lerp along axis j by the corner difference times the level's scale (zero where x_j is
        clamped, like autograd through the clamp). Analytic normals use it instead of differentiating
        :meth:`forward` twice.
        """
        if x.dim() != 2 or x.shape[-1] != self.n_input_dims:
            raise ValueError(f"HashGrid expects (N, {self.n_input_dims}) inputs, got {tuple(x.shape)}")
        kernels = self._triton_kernels(x)
        if kernels is not None:
            return kernels.encode_with_jacobian(self, x)
        inside = ((x >= 0.0) & (x <= 1.0)).to(x.dtype)  # (N, d)
        corners, frac = self._gather_corners(x.clamp(0.0, 1.0))
        n = x.shape[0]
        # weights of the value and of its derivative along each axis: (N, L, 1 + d, 2^d)
        weights = torch.stack(
            [self._corner_weights(frac)] + [self._corner_weights(frac, axis) for axis in range(self.n_input_dims)],
            dim=2,
        )
        out = torch.matmul(weights, corners)  # (N, L, 1 + d, F): one batched product, no slicing in the backward
        value = out[:, :, 0].reshape(n, self.n_output_dims)
        jacobian = out[:, :, 1:].transpose(2, 3).reshape(n, self.n_output_dims, self.n_input_dims)
        jacobian = jacobian * inside[:, None, :]
        return value, jacobian


class VanillaMLP(nn.Module):
    """Fully connected network; without biases by default (``bias=False``), like tiny-cuda-nn's FullyFusedMLP and
    threestudio's VanillaMLP; autocast is disabled inside (fp32 under mixed precision, as threestudio's)."""

    def __init__(
        self,
        n_input_dims: int,
        n_output_dims: int,
        n_neurons: int = 64,
        n_hidden_layers: int = 1,
        activation: str = "ReLU",
        output_activation: Optional[str] = "none",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        dims = [n_input_dims] + [n_neurons] * n_hidden_layers + [n_output_dims]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.activation_name, self.output_activation_name = activation, output_activation
        self.activation = get_activation(activation)
        self.output_activation = get_activation(output_activation)

    @property
    def has_input_gradient(self) -> bool:
        """Whether :meth:`forward_with_input_gradient` is available (one output, activations with known
        derivatives)."""
        return (
            self.n_output_dims == 1
            and get_activation_derivative(self.activation_name) is not None
            and get_activation_derivative(self.output_activation_name) is not None
        )

    @autocast_off
    def forward_with_input_gradient(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output (N, 1) and its gradient w.r.t. the input (N, n_input_dims), as explicit first-order
        differentiable ops (the chain rule written out: w_L·diag(σ'(z_{L−1}))·W_{L−1}···diag(σ'(z_1))·W_1)."""
        if not self.has_input_gradient:
            raise ValueError("forward_with_input_gradient needs one output and known activation derivatives")
        derivative = get_activation_derivative(self.activation_name)
        x = x.to(self.layers[0].weight.dtype)
        slopes = []
        for i, layer in enumerate(self.layers):
            z = layer(x)
            if i < len(self.layers) - 1:
                slopes.append(derivative(z))
                x = self.activation(z)
            else:
                out_slope = get_activation_derivative(self.output_activation_name)(z)  # (N, 1)
                x = self.output_activation(z)
        grad = out_slope * self.layers[-1].weight  # (N, H)
        for layer, slope in zip(reversed(self.layers[:-1]), reversed(slopes)):
            grad = (grad * slope) @ layer.weight
        return x, grad

    @autocast_off
    def forward(self, x: Tensor) -> Tensor:
        """(N, n_input_dims) → (N, n_output_dims), in the layers' dtype (fp32) under any autocast."""
        x = x.to(self.layers[0].weight.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = self.activation(x) if i < len(self.layers) - 1 else self.output_activation(x)
        return x


class _TCNNModule(nn.Module):
    """Wraps a tiny-cuda-nn module: float32 output and the ``n_output_dims`` attribute."""

    def __init__(self, module: nn.Module, n_output_dims: int) -> None:
        super().__init__()
        self.module = module
        self.n_output_dims = n_output_dims

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x).float()


_ENCODING_KEYS = ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution", "per_level_scale")
_MLP_KEYS = ("n_neurons", "n_hidden_layers", "activation", "output_activation")
_TCNN_MLP_TYPES = ("FullyFusedMLP", "CutlassMLP")


def _as_dict(config: Any, what: str) -> Dict[str, Any]:
    config = config_to_primitive(config)
    if not isinstance(config, dict) or "otype" not in config:
        raise ConfigError(f"{what} must be a mapping with an 'otype' key, got {config!r}")
    return dict(config)


def get_encoding(n_input_dims: int, config: Any, fast_paths: str = "auto") -> nn.Module:
    """An input encoding from a tcnn-style config (``otype: HashGrid`` only), with ``.n_output_dims``; ``fast_paths``
    is the mode (``"auto"``/``"off"``) for tiny-cuda-nn and the Triton kernels."""
    config = _as_dict(config, "encoding config")
    otype = config.pop("otype")
    if otype != "HashGrid":
        raise ConfigError(f"unsupported encoding otype {otype!r}; use HashGrid")
    unknown = sorted(set(config) - set(_ENCODING_KEYS) - {"interpolation"})
    if unknown:
        raise ConfigError(f"unknown HashGrid config keys {unknown}; valid: {', '.join(_ENCODING_KEYS)}")
    if config.get("interpolation", "Linear") != "Linear":
        raise ConfigError("HashGrid supports interpolation: Linear only")
    if use_tcnn(fast_paths):
        import tinycudann as tcnn  # lazily: CUDA only

        grid = tcnn.Encoding(n_input_dims, {"otype": "HashGrid", **config}, dtype=torch.float32)
        return _TCNNModule(grid, grid.n_output_dims)
    config.pop("interpolation", None)
    return HashGrid(n_input_dims, **config, fast_paths=fast_paths)


def get_mlp(n_input_dims: int, n_output_dims: int, config: Any, fast_paths: str = "auto") -> nn.Module:
    """An MLP from a tcnn-style config (``otype: VanillaMLP`` | FullyFusedMLP | CutlassMLP).

    VanillaMLP is always the PyTorch module (as in threestudio); the tcnn types use tiny-cuda-nn when available
    and ``fast_paths`` is ``"auto"``, and fall back to VanillaMLP otherwise.
    """
    config = _as_dict(config, "network config")
    otype = config.pop("otype")
    if otype not in ("VanillaMLP",) + _TCNN_MLP_TYPES:
        raise ConfigError(f"unsupported network otype {otype!r}; use VanillaMLP, FullyFusedMLP or CutlassMLP")
    unknown = sorted(set(config) - set(_MLP_KEYS))
    if unknown:
        raise ConfigError(f"unknown network config keys {unknown}; valid: {', '.join(_MLP_KEYS)}")
    if otype in _TCNN_MLP_TYPES and use_tcnn(fast_paths):
        import tinycudann as tcnn  # lazily: CUDA only

        net = tcnn.Network(n_input_dims, n_output_dims, {"otype": otype, **config})
        return _TCNNModule(net, n_output_dims)
    return VanillaMLP(n_input_dims, n_output_dims, **config)


def create_network_with_input_encoding(
    n_input_dims: int, n_output_dims: int, encoding_config: Any, network_config: Any, fast_paths: str = "auto"
) -> nn.Sequential:
    """Encoding followed by an MLP (the proposal-network layout of threestudio/ZeroNVS configs)."""
    encoding = get_encoding(n_input_dims, encoding_config, fast_paths)
    network = get_mlp(encoding.n_output_dims, n_output_dims, network_config, fast_paths)
    return nn.Sequential(encoding, network)
