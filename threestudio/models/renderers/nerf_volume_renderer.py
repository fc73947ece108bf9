"""``nerf-volume-renderer``: volume rendering of an implicit geometry with a material and a background.

Pure PyTorch on dense (n_rays, n_samples) tensors. Samples lie between ``near_plane`` and
``far_plane`` along each ray, spaced ``uniform`` or ``lindisp``; the ``estimator`` places them:

- ``proposal`` (ZeroNVS's default, nerfacc 0.5.3's ``PropNetEstimator``): a small hash-grid density network
  (``proposal_network_config``) is evaluated on ``num_samples_per_ray_proposal`` intervals drawn over the whole ray;
  the ``num_samples_per_ray`` rendered intervals are drawn from its compositing weights, the transmittance left at
  the far end counting in the last interval (:func:`.samplers.sample_proposal`). In training nerfacc's proposal loss
  (:func:`.rendering.interlevel_loss`; NeRF weights detached: it trains only ``self.proposal_network``) is returned
  as ``loss_proposal`` × ``proposal_loss_weight`` (1.0); the system sums it over the step's renders and, with
  ``prop_optimizer_config``, steps the proposal networks' own optimizer with it after the main step, as ZeroNVS
  (``BaseLift3DSystem.step_proposal_optimizer``; without that config they join the main optimizer and the term
  the main loss). As in ZeroNVS, the proposal network sees points normalised to the box of half-size ``radius`` and
  proposes zero density outside it; ``unbounded_prop: true`` instead contracts space like the geometry (mip-NeRF
  360), for scenes with content far away.
- ``importance``: ZeroNVS's ``ImportanceEstimator``: ``num_samples_per_ray_importance`` coarse intervals drawn over
  the whole ray, weighted by the geometry itself (no gradient), then ``num_samples_per_ray`` importance intervals;
  both edge sets are merged and rendered.
- ``stratified``: ``num_samples_per_ray`` stratified samples.

Training renders all rays at once; evaluation and no-grad renders go in chunks of ``eval_chunk_size`` *rays*
(ZeroNVS chunks points; here the unit is rays). Memory in training: with ``grad_checkpoint_chunk_size`` > 0 the
geometry and the proposal networks run on chunks of that many *samples* without an autograd graph
(:func:`threestudio.utils.recompute.recomputed_map`): only their inputs and outputs (a few floats per sample) are
kept instead of the hash grid's and MLPs' intermediate tensors (kilobytes per sample with analytic normals), and
the backward recomputes the graph one chunk at a time. Gradients are the same; the render costs one more forward of
the fields. 0 keeps the whole graph (threestudio's behaviour).
Ray directions need not be unit length; distances and depth are in units of ``‖rays_d‖``.
``configure(..., fast_paths)`` takes the system's fast-path mode and hands it to the proposal networks' hash grids
and to the compositing (:mod:`.rendering`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import threestudio
from threestudio.models.background.base import BaseBackground
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.geometry.contraction import contract_to_unisphere, scale_to_unit_cube
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.networks import create_network_with_input_encoding, get_activation
from threestudio.models.renderers.rendering import (
    SAMPLING_TYPES,
    accumulate,
    interlevel_loss,
    render_weights,
    spacing_to_distance,
)
from threestudio.models.renderers.samplers import (
    interval_midpoints,
    sample_importance,
    sample_proposal,
    sample_stratified,
)
from threestudio.utils.base import BaseModule
from threestudio.utils.config import config_to_primitive
from threestudio.utils.errors import ConfigError
from threestudio.utils.fast_paths import parse_fast_paths
from threestudio.utils.recompute import FieldOutput, recomputed_map

ESTIMATORS = ("proposal", "importance", "stratified")
DEFAULT_PROPOSAL_NETWORK = {
    "n_input_dims": 3,
    "n_output_dims": 1,
    "encoding_config": {"otype": "HashGrid", "n_levels": 5, "n_features_per_level": 2, "log2_hashmap_size": 17,
                        "base_resolution": 16, "per_level_scale": 1.681792830507429},
    "network_config": {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 64,
                       "n_hidden_layers": 1},
}
# per-sample outputs returned in training (for regularisers); everything else is per ray
_SAMPLE_KEYS = ("weights", "t_points", "t_intervals", "t_dirs", "points", "density", "features", "normal",
                "shading_normal")


@threestudio.register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        num_samples_per_ray: int = 64
        num_samples_per_ray_importance: int = 64
        num_samples_per_ray_proposal: int = 64
        near_plane: float = 0.1
        far_plane: float = 1000.0
        estimator: str = "proposal"
        sampling_type: str = "lindisp"
        randomized: bool = True
        eval_chunk_size: int = 4096
        # samples per gradient-checkpointed chunk of the fields in training; 0 keeps the whole graph
        grad_checkpoint_chunk_size: int = 0
        return_comp_normal: bool = False
        # default: ZeroNVS's proposal network (5-level hash grid up to 128³, one 64-wide hidden layer)
        proposal_network_config: Optional[dict] = field(default_factory=lambda: dict(DEFAULT_PROPOSAL_NETWORK))
        prop_optimizer_config: Optional[dict] = None
        proposal_loss_weight: float = 1.0
        unbounded_prop: bool = False

    cfg: Config

    @classmethod
    def parse_config(cls, cfg: Optional[Any]) -> Any:
        parsed = super().parse_config(cfg)
        if "num_samples_per_ray_importance" in (cfg or {}) and parsed.estimator != "importance":
            raise ConfigError(
                f"renderer.num_samples_per_ray_importance is used only by estimator importance (this renderer's is "
                f"{parsed.estimator}); remove it"
            )
        return parsed

    def configure(
        self,
        geometry: BaseImplicitGeometry,
        material: BaseMaterial,
        background: BaseBackground,
        fast_paths: str = "auto",
    ) -> None:
        cfg = self.cfg
        self.fast_paths = parse_fast_paths(fast_paths)
        if cfg.estimator not in ESTIMATORS:
            raise ConfigError(f"renderer.estimator {cfg.estimator!r} is not supported; use one of {ESTIMATORS}")
        if cfg.sampling_type not in SAMPLING_TYPES:
            raise ConfigError(f"renderer.sampling_type must be one of {SAMPLING_TYPES}, got {cfg.sampling_type!r}")
        if not 0.0 <= cfg.near_plane < cfg.far_plane:
            raise ConfigError(f"renderer needs 0 <= near_plane < far_plane, got {cfg.near_plane}, {cfg.far_plane}")
        if cfg.sampling_type == "lindisp" and cfg.near_plane <= 0.0:
            raise ConfigError("renderer.sampling_type lindisp needs near_plane > 0 (it spaces samples by 1/t)")
        if min(cfg.num_samples_per_ray, cfg.num_samples_per_ray_importance, cfg.num_samples_per_ray_proposal) < 1:
            raise ConfigError("renderer num_samples_per_ray* must be >= 1")
        if cfg.eval_chunk_size < 1:
            raise ConfigError("renderer.eval_chunk_size must be >= 1 (rays per evaluation chunk)")
        if cfg.grad_checkpoint_chunk_size < 0:
            raise ConfigError(
                "renderer.grad_checkpoint_chunk_size must be >= 0 (samples per checkpointed chunk; 0 = off)"
            )
        # kept in a list so that they are not registered twice as sub-modules (the system owns them)
        self._components: Dict[str, nn.Module] = {"geometry": geometry, "material": material, "background": background}
        r = float(cfg.radius)
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32), persistent=False)
        self.proposal_network: Optional[nn.Module] = None  # the proposal estimator's density network
        self._register_load_state_dict_pre_hook(_rename_proposal_networks_keys)
        if cfg.estimator == "proposal":
            if cfg.proposal_network_config is None:
                raise ConfigError("renderer.estimator proposal needs renderer.proposal_network_config")
            net_cfg = config_to_primitive(cfg.proposal_network_config)
            try:
                self.proposal_network = create_network_with_input_encoding(**net_cfg, fast_paths=self.fast_paths)
            except TypeError as e:
                raise ConfigError(
                    "renderer.proposal_network_config needs n_input_dims, n_output_dims, encoding_config, "
                    f"network_config: {e}"
                ) from None
        self.proposal_density_activation = get_activation("shifted_trunc_exp")

    # the geometry, material and background are shared with the system, not owned by the renderer
    @property
    def geometry(self) -> BaseImplicitGeometry:
        return self._components["geometry"]

    @property
    def material(self) -> BaseMaterial:
        return self._components["material"]

    @property
    def background(self) -> BaseBackground:
        return self._components["background"]

    # ------------------------------------------------------------------ sampling
    def _to_distance(self, s: Tensor) -> Tensor:
        return spacing_to_distance(s, self.cfg.near_plane, self.cfg.far_plane, self.cfg.sampling_type)

    def _proposal_density(self, points: Tensor, network: nn.Module) -> Tensor:
        """Proposal density (N, 1) at world points (N, 3)."""
        bbox = self.bbox.to(points.dtype)
        if self.cfg.unbounded_prop:
            x = contract_to_unisphere(points, bbox, unbounded=True)
            inside = torch.ones_like(points[..., :1])
        else:
            x = scale_to_unit_cube(points, bbox)
            inside = ((x > 0.0) & (x < 1.0)).all(dim=-1, keepdim=True).to(points.dtype)
        raw = self._map_samples(network, x.clamp(0.0, 1.0), network).reshape(*points.shape[:-1], 1).to(points.dtype)
        return self.proposal_density_activation(raw) * inside

    def _map_samples(self, fn: Callable[[Tensor], FieldOutput], points: Tensor, owner: nn.Module) -> FieldOutput:
        """``fn(points)`` for a field of ``owner`` evaluated per sample; in training with
        ``grad_checkpoint_chunk_size`` > 0 its graph is recomputed chunk by chunk in the backward (module doc)."""
        chunk = self.cfg.grad_checkpoint_chunk_size if self.training else 0
        return recomputed_map(fn, points, list(owner.parameters()), chunk)

    def _sample(self, rays_o: Tensor, rays_d: Tensor, with_loss: bool):
        """Edges s (R, S+1) of the rendered intervals and, for the proposal estimator, its levels."""
        cfg, n_rays, randomized = self.cfg, rays_o.shape[0], self.training and self.cfg.randomized
        if cfg.estimator == "stratified":
            return sample_stratified(n_rays, cfg.num_samples_per_ray, randomized, rays_o.device), []
        if cfg.estimator == "importance":
            s = sample_importance(
                rays_o, rays_d, self.geometry.forward_density, cfg.num_samples_per_ray_importance,
                cfg.num_samples_per_ray, self._to_distance, randomized, self.fast_paths,
            )
            return s, []
        density_fns = [partial(self._proposal_density, network=self.proposal_network)]
        return sample_proposal(
            rays_o, rays_d, density_fns, [cfg.num_samples_per_ray_proposal] * len(density_fns),
            cfg.num_samples_per_ray, self._to_distance, randomized, requires_grad=with_loss, fast_paths=self.fast_paths,
        )

    # ------------------------------------------------------------------ rendering
    def _needs_normal(self) -> bool:
        if self.geometry.cfg.normal_type is None:
            return False
        return bool(self.material.requires_normal or self.cfg.return_comp_normal)

    def render_rays(
        self, rays_o: Tensor, rays_d: Tensor, light_positions: Tensor, bg_color: Tensor, **kwargs: Any
    ) -> Dict[str, Tensor]:
        """Render R rays: rays_o, rays_d, light_positions, bg_color (R, 3) → per-ray outputs (R, C) (and, in
        training, per-sample outputs (N, C) with N = R·S)."""
        training = self.training and torch.is_grad_enabled()
        s_edges, proposal_levels = self._sample(rays_o, rays_d, with_loss=training)
        t_edges = self._to_distance(s_edges)
        points, deltas = interval_midpoints(rays_o, rays_d, t_edges)  # (R, S, 3), (R, S)
        n_rays, n_samples = deltas.shape
        t_mid = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
        flat_points = points.reshape(-1, 3)
        t_dirs = rays_d[:, None, :].expand(-1, n_samples, -1).reshape(-1, 3)
        t_lights = light_positions[:, None, :].expand(-1, n_samples, -1).reshape(-1, 3)

        geo_out = self._map_samples(
            partial(self.geometry, output_normal=self._needs_normal()), flat_points, self.geometry
        )
        rgb = self.material(
            viewdirs=t_dirs, positions=flat_points, light_positions=t_lights, features=geo_out["features"],
            shading_normal=geo_out.get("shading_normal"), **kwargs,
        )
        weights, _, _ = render_weights(geo_out["density"].reshape(n_rays, n_samples), deltas, self.fast_paths)
        composite = partial(accumulate, weights, fast_paths=self.fast_paths)

        opacity = composite()
        depth = composite(t_mid[..., None])
        comp_rgb_fg = composite(rgb.reshape(n_rays, n_samples, -1))
        out = {
            "comp_rgb": comp_rgb_fg + bg_color * (1.0 - opacity),
            "comp_rgb_fg": comp_rgb_fg,
            "comp_rgb_bg": bg_color,
            "opacity": opacity,
            "depth": depth,
        }
        if "normal" in geo_out and (self.cfg.return_comp_normal or not training):
            comp_normal = F.normalize(composite(geo_out["normal"].reshape(n_rays, n_samples, 3)), dim=-1)
            out["comp_normal"] = (comp_normal + 1.0) / 2.0 * opacity  # threestudio's visualisation convention
        if training:
            out.update(geo_out)
            out.update(
                weights=weights.reshape(-1, 1),
                t_points=t_mid.reshape(-1, 1),
                t_intervals=deltas.reshape(-1, 1),
                t_dirs=t_dirs,
                points=flat_points,
            )
            if proposal_levels:
                loss = sum(interlevel_loss(s_edges, weights, s_env, w_env) for s_env, w_env in proposal_levels)
                out["loss_proposal"] = loss * self.cfg.proposal_loss_weight
        return out

    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        light_positions: Optional[Tensor] = None,
        bg_color: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        """Render views: rays_o, rays_d (B, H, W, 3); light_positions (B, 3) or None (a light at each camera);
        bg_color (B, 3), (3,) or (B, H, W, 3) overrides the background module.

        Returns comp_rgb, comp_rgb_fg, comp_rgb_bg (B, H, W, 3), opacity, depth (B, H, W, 1),
        comp_normal (B, H, W, 3) when normals exist; in training also weights (N, 1), normal (N, 3), t_dirs (N, 3),
        points (N, 3), ... and loss_proposal (scalar) for the proposal estimator.
        """
        batch_size, height, width = rays_o.shape[:3]
        n_rays = batch_size * height * width
        comp_rgb_bg = self.background(dirs=rays_d)
        if bg_color is None:
            bg_color = comp_rgb_bg
        bg_color = bg_color.to(rays_o.dtype)
        if bg_color.dim() == 1:
            bg_color = bg_color.expand(batch_size, height, width, -1)
        elif bg_color.dim() == 2:
            bg_color = bg_color[:, None, None, :].expand(-1, height, width, -1)
        if light_positions is None:
            flat_lights = rays_o.reshape(-1, 3)
        else:
            flat_lights = light_positions.reshape(-1, 1, 1, 3).expand(-1, height, width, -1).reshape(-1, 3)
        rays = (rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), flat_lights, bg_color.reshape(n_rays, -1))

        if self.training and torch.is_grad_enabled():
            out = self.render_rays(*rays, **kwargs)
        else:
            out = self._render_in_chunks(rays, **kwargs)

        shaped = {}
        for key, value in out.items():
            if key in _SAMPLE_KEYS or value.dim() == 0:
                shaped[key] = value
            else:
                shaped[key] = value.reshape(batch_size, height, width, -1)
        shaped["comp_rgb_bg"] = comp_rgb_bg  # the background module's colour, before any bg_color override
        return shaped

    def _render_in_chunks(self, rays: tuple, **kwargs: Any) -> Dict[str, Tensor]:
        chunk = self.cfg.eval_chunk_size
        n_rays = rays[0].shape[0]
        pieces: List[Dict[str, Tensor]] = []
        for start in range(0, n_rays, chunk):
            pieces.append(self.render_rays(*(r[start : start + chunk] for r in rays), **kwargs))
        return {k: torch.cat([p[k] for p in pieces], dim=0) for k in pieces[0]}

    def train(self, mode: bool = True):
        # the shared components follow the renderer's mode, as in threestudio
        for module in self._components.values():
            module.train(mode)
        return super().train(mode)


def _rename_proposal_networks_keys(state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before the rename hold ``proposal_networks.0.*`` (a one-element ModuleList): load them
    as ``proposal_network.*``."""
    old = prefix + "proposal_networks.0."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "proposal_network." + key[len(old):]] = state_dict.pop(key)
