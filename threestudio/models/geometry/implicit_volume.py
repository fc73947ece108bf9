"""``implicit-volume``: a NeRF density field + albedo features on a shared hash-grid encoding.

As in threestudio/ZeroNVS, world points are contracted (``unbounded: true``, the default: mip-NeRF 360 style, see
:mod:`.contraction`) into [0, 1]^3 and encoded by one hash grid; two MLP heads predict the raw density and the
features (albedo before the material's activation). A density bias in *world* coordinates shapes the
initialisation: ``blob_magic3d`` adds ``scale · (1 − ‖x‖/std)`` (a ball of radius ``std``, strongly negative far
away, so distant space starts empty), ``blob_dreamfusion`` adds ``scale · exp(−‖x‖²/(2 std²))``, a number adds a
constant. ``density_activation`` maps it to a density ≥ 0 (softplus, exp, trunc_exp).

Normals point outward (``−∇σ / ‖∇σ‖``): ``analytic`` is the exact gradient of the density, differentiable so that
normal losses train the field. ``analytic_normal_method: autograd`` (default, as threestudio) differentiates the
density with ``create_graph``, so training backpropagates twice through the grid; ``explicit`` (pure-PyTorch hash
grid and MLP, density activation with a known derivative) writes the gradient out with first-order ops — the grid's
Jacobian from the same gather (:meth:`HashGrid.forward_with_jacobian`), the MLP's input gradient
(:meth:`VanillaMLP.forward_with_input_gradient`), autograd only through the cheap contraction and density bias. Both
give the same values and gradients (tested to 1e-5 at the paper's geometry); on the CPU they take the same time. The
shipped configs that render normals use ``explicit``: on CUDA the grid then stays on the Triton kernels (their
Jacobian), whereas ``autograd``'s double backward keeps it on the reference (docs/PERFORMANCE.md, "Traced step").
In mode auto on CUDA, the grid and both heads run as one Triton kernel (:mod:`threestudio.kernels.fused_field`,
when it supports the shapes: the paper's) for the plain forward and for explicit normals; contraction, density bias
and activation stay in PyTorch.
``finite_difference`` uses central differences with step ``finite_difference_normal_eps`` (threestudio's
``finite_difference_laplacian``; its forward-difference ``finite_difference`` is not offered, and
``finite_difference_laplacian`` is refused with that hint); ``null`` computes none.

The field runs in fp32 under any autocast (``forward``/``forward_density`` disable it, and so do the hash grid and
the MLPs), as ZeroNVS's fields do under ``16-mixed``; only the diffusion side follows the precision setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.geometry.contraction import contract_to_unisphere
from threestudio.models.networks import (
    HashGrid,
    VanillaMLP,
    activations_with_derivative,
    autocast_off,
    get_activation,
    get_activation_derivative,
    get_encoding,
    get_mlp,
)
from threestudio.utils.errors import ConfigError
from threestudio.utils.fast_paths import parse_fast_paths, triton_kernels

NORMAL_TYPES = (None, "analytic", "finite_difference")
ANALYTIC_NORMAL_METHODS = ("autograd", "explicit")
DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion")


@threestudio.register("implicit-volume")
class ImplicitVolume(BaseImplicitGeometry):
    """Hash-grid NeRF field: ``forward(points (N, 3))`` → density (N, 1), features (N, n_feature_dims)."""

    @dataclass
    class Config(BaseImplicitGeometry.Config):
        n_input_dims: int = 3
        n_feature_dims: int = 3
        density_activation: Optional[str] = "softplus"
        # "blob_magic3d" | "blob_dreamfusion" | a number
        density_bias: Any = "blob_magic3d"
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        pos_encoding_config: dict = field(
            default_factory=lambda: {
                "otype": "HashGrid",
                "n_levels": 16,
                "n_features_per_level": 2,
                "log2_hashmap_size": 19,
                "base_resolution": 16,
                "per_level_scale": 1.447269237440378,
            }
        )
        mlp_network_config: dict = field(
            default_factory=lambda: {
                "otype": "VanillaMLP",
                "activation": "ReLU",
                "output_activation": "none",
                "n_neurons": 64,
                "n_hidden_layers": 1,
            }
        )
        normal_type: Optional[str] = "finite_difference"
        analytic_normal_method: str = "autograd"  # autograd | explicit (see the module docstring)
        finite_difference_normal_eps: float = 0.01

    cfg: Config

    def configure(self, fast_paths: str = "auto") -> None:
        """Build the encoding and heads; ``fast_paths`` (the system's mode) goes to the encoding and the MLPs."""
        super().configure()
        self.fast_paths = parse_fast_paths(fast_paths, "geometry fast_paths")
        if self.cfg.normal_type == "finite_difference_laplacian":
            raise ConfigError(
                "geometry.normal_type finite_difference_laplacian (threestudio's central differences) is "
                "finite_difference here, which already uses central differences; set normal_type: finite_difference"
            )
        if self.cfg.normal_type not in NORMAL_TYPES:
            raise ConfigError(
                f"geometry.normal_type {self.cfg.normal_type!r} is not supported; use one of {NORMAL_TYPES}"
            )
        if self.cfg.analytic_normal_method not in ANALYTIC_NORMAL_METHODS:
            raise ConfigError(
                f"geometry.analytic_normal_method {self.cfg.analytic_normal_method!r} is not supported; use one of "
                f"{ANALYTIC_NORMAL_METHODS}"
            )
        bias = self.cfg.density_bias
        if not (bias in DENSITY_BIASES or (isinstance(bias, (int, float)) and not isinstance(bias, bool))):
            raise ConfigError(f"geometry.density_bias must be one of {DENSITY_BIASES} or a number, got {bias!r}")
        self.density_activation = get_activation(self.cfg.density_activation)
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config, fast_paths)
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, self.cfg.mlp_network_config, fast_paths)
        if self.cfg.n_feature_dims > 0:
            self.feature_network = get_mlp(
                self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config, fast_paths
            )
        if self.cfg.analytic_normal_method == "explicit" and not self.has_explicit_normals:
            known = ", ".join(activations_with_derivative())
            raise ConfigError(
                "geometry.analytic_normal_method explicit needs the pure-PyTorch HashGrid and a one-output VanillaMLP "
                f"whose activations and the density_activation are among {known}; use autograd "
                "(or system.fast_paths=off when tiny-cuda-nn was chosen)"
            )

    def density_bias(self, points: Tensor) -> Tensor:
        """The pre-activation density bias (N, 1) (or a scalar) at world points (N, 3)."""
        bias = self.cfg.density_bias
        if bias == "blob_magic3d":
            return self.cfg.density_blob_scale * (1.0 - points.norm(dim=-1, keepdim=True) / self.cfg.density_blob_std)
        if bias == "blob_dreamfusion":
            sq = (points**2).sum(dim=-1, keepdim=True)
            return self.cfg.density_blob_scale * torch.exp(-0.5 * sq / self.cfg.density_blob_std**2)
        return torch.as_tensor(float(bias), dtype=points.dtype, device=points.device)

    def _contract(self, points: Tensor) -> Tensor:
        """Contracted points (N', 3) in [0, 1]^3 (beyond it outside the bounded box) of world points (..., 3)."""
        contracted = contract_to_unisphere(points, self.bbox.to(points.dtype), self.unbounded)
        return contracted.reshape(-1, self.cfg.n_input_dims)

    def _fused_kernels(self, contracted: Tensor):
        """The fused field's Triton kernels (:mod:`threestudio.kernels.fused_field`: grid + both heads in one kernel)
        when they may evaluate this field at contracted points (N, 3) here, else None (the reference)."""
        if self.fast_paths == "off" or self.cfg.n_feature_dims <= 0:
            return None
        kernels = triton_kernels("fused_field", self.fast_paths, contracted.device)
        if kernels is None or not kernels.supports(self.encoding, self.density_network, self.feature_network,
                                                   contracted):
            return None
        return kernels

    def _encode(self, points: Tensor) -> Tensor:
        return self.encoding(self._contract(points))

    def _density_from_encoding(self, points: Tensor, enc: Tensor) -> Tensor:
        raw = self.density_network(enc).reshape(*points.shape[:-1], 1)
        return self.density_activation(raw + self.density_bias(points))

    @autocast_off
    def forward_density(self, points: Tensor) -> Tensor:
        """Density (..., 1) ≥ 0 at world points (..., 3)."""
        return self._density_from_encoding(points, self._encode(points))

    @property
    def has_explicit_normals(self) -> bool:
        """Whether analytic normals can be written out with first-order ops (see the module docstring)."""
        return (
            isinstance(self.encoding, HashGrid)
            and isinstance(self.density_network, VanillaMLP)
            and self.density_network.has_input_gradient
            and get_activation_derivative(self.cfg.density_activation) is not None
        )

    @autocast_off
    def forward(self, points: Tensor, output_normal: bool = False) -> Dict[str, Tensor]:
        """World points (N, 3) → {"density": (N, 1), "features": (N, C), ["normal", "shading_normal": (N, 3)]}."""
        grad_enabled = torch.is_grad_enabled()
        analytic = output_normal and self.cfg.normal_type == "analytic"
        if analytic and self.cfg.analytic_normal_method == "explicit" and not points.requires_grad:
            return self._forward_explicit_normals(points)
        with torch.set_grad_enabled(grad_enabled or analytic):
            if analytic and not points.requires_grad:
                points = points.detach().requires_grad_(True)
            contracted = self._contract(points)
            # autograd normals differentiate the field twice: the reference
            kernels = None if analytic else self._fused_kernels(contracted)
            out: Dict[str, Tensor] = {}
            if kernels is not None:  # grid + both heads in one kernel; bias and activation here
                raw, features = kernels.field(self.encoding, self.density_network, self.feature_network, contracted)
                density = self.density_activation(raw.reshape(*points.shape[:-1], 1) + self.density_bias(points))
                out["density"] = density
                out["features"] = features.reshape(*points.shape[:-1], self.cfg.n_feature_dims)
            else:
                enc = self.encoding(contracted)
                density = self._density_from_encoding(points, enc)
                out["density"] = density
                if self.cfg.n_feature_dims > 0:
                    out["features"] = self.feature_network(enc).reshape(*points.shape[:-1], self.cfg.n_feature_dims)
            if output_normal:
                normal = self._normal(points, density, create_graph=grad_enabled)
                out["normal"] = normal
                out["shading_normal"] = normal
        if not grad_enabled:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _forward_explicit_normals(self, points: Tensor) -> Dict[str, Tensor]:
        """:meth:`forward` with analytic normals from the grid's Jacobian and the MLP's input gradient."""
        grad_enabled = torch.is_grad_enabled()
        leaf = points.detach().requires_grad_(True)
        with torch.enable_grad():  # only the contraction and the density bias are differentiated by autograd
            contracted = contract_to_unisphere(leaf, self.bbox.to(points.dtype), self.unbounded)
            bias = self.density_bias(leaf)
        flat = contracted.detach().reshape(-1, 3)  # detached: no second derivative w.r.t. the points
        kernels = self._fused_kernels(flat)
        features = None
        if kernels is not None:  # grid + both heads in one kernel, ∂raw/∂contracted from it
            raw, features, grad_contracted = kernels.field_with_normals(
                self.encoding, self.density_network, self.feature_network, flat)
        else:
            enc, enc_jacobian = self.encoding.forward_with_jacobian(flat)
            raw, raw_grad = self.density_network.forward_with_input_gradient(enc)  # (N, 1), (N, n_enc)
            grad_contracted = torch.einsum("nk,nkd->nd", raw_grad, enc_jacobian)
        grad_contracted = grad_contracted.reshape(points.shape)
        pre = raw.reshape(*points.shape[:-1], 1) + bias
        density = self.density_activation(pre)
        outputs, grad_outputs = [contracted], [grad_contracted]
        if bias.requires_grad:
            outputs.append(bias)
            grad_outputs.append(torch.ones_like(bias))
        (grad_points,) = torch.autograd.grad(outputs, leaf, grad_outputs, create_graph=grad_enabled)
        grad_density = get_activation_derivative(self.cfg.density_activation)(pre) * grad_points
        normal = F.normalize(-grad_density, dim=-1)
        out: Dict[str, Tensor] = {"density": density, "normal": normal, "shading_normal": normal}
        if self.cfg.n_feature_dims > 0:
            if features is None:
                features = self.feature_network(enc)
            out["features"] = features.reshape(*points.shape[:-1], self.cfg.n_feature_dims)
        if not grad_enabled:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def _normal(self, points: Tensor, density: Tensor, create_graph: bool) -> Tensor:
        """Outward unit normals (N, 3) = −∇σ/‖∇σ‖."""
        if self.cfg.normal_type is None:
            raise ConfigError("normals were requested but geometry.normal_type is null; set it to 'analytic'")
        if self.cfg.normal_type == "analytic":
            (grad,) = torch.autograd.grad(density, points, torch.ones_like(density), create_graph=create_graph)
        else:
            eps = self.cfg.finite_difference_normal_eps
            offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps  # (3, 3)
            shifted = torch.cat([points[..., None, :] + offsets, points[..., None, :] - offsets], dim=-2)  # (N,6,3)
            dens = self.forward_density(shifted)[..., 0]  # (N, 6)
            grad = (dens[..., :3] - dens[..., 3:]) / (2.0 * eps)
        return F.normalize(-grad, dim=-1)
