"""Lightning systems: the training/rendering loop around geometry, renderer and guidance.

:class:`BaseSystem` holds what every system needs (typed config, schedules, optimizers, NaN-step
skipping, output folders); :class:`BaseLift3DSystem` adds the NeRF parts (geometry, material,
background, renderer), validation/test renders and mesh export.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

import threestudio
from threestudio.utils.base import Updateable
from threestudio.utils.config import config_to_primitive, parse_structured
from threestudio.utils.errors import ConfigError, TrainingDiverged, UserError
from threestudio.utils.fast_paths import parse_fast_paths
from threestudio.utils.io import ensure_folder
from threestudio.utils.schedule import C

logger = logging.getLogger(__name__)
# the panels of a test frame (visual_row without extras or normals), named in the test video's caption strip
TEST_PANELS = ("rgb", "depth (near = bright)", "opacity")
VIDEO_MIN_HEIGHT = 256  # test videos of smaller renders are enlarged (nearest neighbour) to at least this height


MAX_LR = 1e30  # larger learning rates make torch's float32 updates overflow (a traceback inside the step)


def build_optimizer(cfg: Dict[str, Any], param_groups: List[Dict[str, Any]]) -> torch.optim.Optimizer:
    """``torch.optim.<cfg.name>(param_groups, **cfg.args)``; unknown optimizer names are a ConfigError."""
    cfg = dict(config_to_primitive(cfg))
    name = cfg.get("name", "Adam")
    optim_cls = getattr(torch.optim, name, None)
    if optim_cls is None or not isinstance(optim_cls, type):
        raise ConfigError(
            f"unknown optimizer {name!r} in system.optimizer.name; use a torch.optim class name, e.g. Adam"
        )
    for group in [cfg.get("args", {}), *param_groups]:
        lr = group.get("lr") if isinstance(group, dict) else None
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr <= MAX_LR):
            raise ConfigError(f"system.optimizer learning rates must be finite, >= 0 and at most {MAX_LR:g} (larger "
                              f"steps overflow float32 parameters), got lr={lr!r}")
    try:
        return optim_cls(param_groups, **cfg.get("args", {}))
    except (TypeError, ValueError) as e:  # unknown arguments; torch's own range checks (betas, eps, ...)
        raise ConfigError(f"bad system.optimizer.args for {name}: {str(e).splitlines()[0]}") from None


class BaseSystem(pl.LightningModule, Updateable):
    """Typed config, schedules, optimizer, non-finite-loss skipping and output paths."""

    # Loss names this system implements: config keys are ``system.loss.lambda_<name>``.
    LOSS_NAMES: Sequence[str] = ()
    # Loss names accepted for compatibility with threestudio/ZeroNVS configs only while their weight is 0.
    UNSUPPORTED_LOSS_NAMES: Sequence[str] = ()

    @dataclass
    class Config:
        loss: dict = field(default_factory=dict)
        optimizer: dict = field(default_factory=lambda: {"name": "Adam", "args": {"lr": 0.01}})
        scheduler: Optional[dict] = None
        # start from a checkpoint's weights (no optimizer state)
        weights: Optional[str] = None
        weights_ignore_modules: Optional[List[str]] = None
        # "auto": fast paths (Triton kernels, tinycudann) where they can run; "off": pure PyTorch. Passed to the
        # components this system builds (threestudio.utils.fast_paths)
        fast_paths: str = "auto"
        # stop after this many consecutive steps with a NaN/inf loss
        max_nonfinite_steps: int = 20

    cfg: Config

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self._check_loss_config()
        self.cfg.fast_paths = parse_fast_paths(self.cfg.fast_paths)  # YAML reads a bare `off` as false
        self._save_dir: Optional[str] = None
        self._nonfinite_in_a_row = 0
        self.nonfinite_streak_start: Optional[int] = None  # step of the first non-finite step of the streak
        self._params_finite: Optional[Tensor] = None  # device flag set after each update, read with the next loss
        self._ckpt_global_step = 0
        self._step_started = 0.0
        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)

    # ----- configuration -------------------------------------------------------------------------------------
    def configure(self) -> None:
        """Build the system's modules from ``self.cfg``."""

    def prepare(self, mode: str, datamodule: Any) -> None:
        """Load what ``mode`` needs (e.g. the guidance model) and fail early on bad input, before any write."""

    def _check_loss_config(self) -> None:
        for key, value in self.cfg.loss.items():
            try:
                C(config_to_primitive(value), 0, 0)  # a number or a schedule, else ConfigError now
            except ConfigError as e:
                raise ConfigError(f"system.loss.{key}: {e}") from None
            name = key[len("lambda_") :] if key.startswith("lambda_") else None
            if name in self.LOSS_NAMES:
                continue
            if name in self.UNSUPPORTED_LOSS_NAMES:
                if self._max_weight(value) > 0:
                    raise ConfigError(
                        f"system.loss.{key} is not supported by this system (it needs a part ZeroNVS's pipeline "
                        f"does not have here); set it to 0"
                    )
                continue
            valid = ", ".join(f"lambda_{n}" for n in self.LOSS_NAMES)
            raise ConfigError(f"unknown config key 'system.loss.{key}'; valid keys: {valid}")

    @staticmethod
    def _max_weight(value: Any) -> float:
        value = config_to_primitive(value)
        if isinstance(value, (list, tuple)):
            return max(abs(v) for v in value[1:3]) if len(value) == 4 else max(abs(v) for v in value[:2])
        return abs(float(value))

    def read_checkpoint(self, path: str, what: str) -> Dict[str, Any]:
        """A Lightning checkpoint of this system, read without running code from it and checked to fit.

        Raises UserError (one line) for a missing, empty, corrupt or unsafe file, one without a ``state_dict``,
        and one whose tensors do not fit this system (unexpected keys or shapes).
        """
        from zeronvs_diffusion.torch_load import load_torch_file

        state = load_torch_file(path, what, mmap=False)
        state_dict = state.get("state_dict") if isinstance(state, dict) else None
        if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
            raise UserError(f"{what} {path} is not a Lightning checkpoint of this project (no state_dict of tensors)")
        own = self.state_dict()
        unexpected = [k for k in state_dict if k not in own]
        if unexpected:
            raise UserError(f"{what} {path} holds keys this system does not have, e.g. {unexpected[:3]}")
        mismatched = [
            f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in state_dict.items()
            if tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched:
            raise UserError(
                f"{what} {path} does not fit this system's config ({len(mismatched)} tensors of other shapes, e.g. "
                f"{mismatched[0]}): was it written with another config?"
            )
        return state

    def load_weights(self, path: str, ignore_modules: Optional[List[str]] = None) -> None:
        """Load model weights (no optimizer state) from a Lightning checkpoint."""
        state = self.read_checkpoint(path, "system.weights checkpoint")
        ignore = tuple(f"{m}." for m in (ignore_modules or []))
        state_dict = {k: v for k, v in state["state_dict"].items() if not k.startswith(ignore)}
        missing, _ = self.load_state_dict(state_dict, strict=False)
        if missing:
            logger.warning("system.weights: %d parameters not in %s kept their initial values", len(missing), path)
        self._ckpt_global_step = int(state.get("global_step", 0))
        self.do_update_step(int(state.get("epoch", 0)), self._ckpt_global_step, on_load_weights=True)

    def check_resume_checkpoint(self, path: str) -> Dict[str, Any]:
        """The ``resume=`` checkpoint, read and checked to fit this system before anything is written."""
        state = self.read_checkpoint(path, "resume checkpoint")
        missing = [k for k in self.state_dict() if k not in state["state_dict"]]
        if missing:
            raise UserError(f"resume checkpoint {path} lacks tensors of this system, e.g. {missing[:3]}")
        return state

    # ----- steps and schedules -------------------------------------------------------------------------------
    @property
    def true_global_step(self) -> int:
        """Optimizer steps taken: the trainer's during fitting, the loaded checkpoint's when only rendering."""
        trainer_step = self._trainer.global_step if self._trainer is not None else 0
        return max(trainer_step, self._ckpt_global_step)

    def set_global_step(self, step: int) -> None:
        """Set the step seen by schedules when the system is driven without a Trainer (benchmarks, tools)."""
        self._ckpt_global_step = int(step)

    def C(self, value: Any) -> float:
        """Resolve a schedulable config value at the current step."""
        return C(value, self.current_epoch if self._trainer is not None else 0, self.true_global_step)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log`` while a Trainer drives the system; driven without one (tests, benchmarks, tools calling
        the steps directly) there is nowhere to log to, and nothing is logged (Lightning would warn each time)."""
        if self._trainer is None:
            return
        super().log(name, value, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._ckpt_global_step = int(checkpoint.get("global_step", 0))
        self.do_update_step(int(checkpoint.get("epoch", 0)), self._ckpt_global_step, on_load_weights=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the datamodule moves its training dataset to the step itself (it builds the batch before this hook)
        self.do_update_step(self.current_epoch, self.true_global_step)
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_started:
            self.log("timing/step_s", time.perf_counter() - self._step_started, prog_bar=False)
        # whether the update left every parameter finite: a device flag, read with the next step's loss (one sync)
        params = [p for p in self.parameters() if p.requires_grad]
        if params:
            self._params_finite = torch.stack([torch.isfinite(p).all() for p in params]).all()

    @property
    def nonfinite_streak(self) -> int:
        """Consecutive non-finite steps up to now (0 after a finite one)."""
        return self._nonfinite_in_a_row

    def weights_are_finite(self) -> bool:
        """False during a non-finite streak or when a parameter is NaN/inf (checkpoints are skipped then)."""
        if self._nonfinite_in_a_row > 0:
            return False
        return all(bool(torch.isfinite(p).all()) for p in self.parameters())

    def _nonfinite_terms(self, terms: Dict[str, Tensor], total: Tensor) -> List[str]:
        """Names of what is NaN/inf in this step (loss terms, or the parameters after the last update); [] if none."""
        finite = torch.isfinite(total)
        if self._params_finite is not None:
            finite = finite & self._params_finite.to(finite.device)
        if bool(finite):  # the step's one host synchronisation
            return []
        if self._params_finite is not None and not bool(self._params_finite):
            return ["parameters after the last update"]
        return [k for k, v in terms.items() if not torch.isfinite(v)] or ["total"]

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Optional[Tensor]:
        terms = self.main_loss_terms(batch)
        total: Tensor = sum(terms.values())  # type: ignore[assignment]
        bad = self._nonfinite_terms(terms, total)
        if bad:
            if self._nonfinite_in_a_row == 0:
                self.nonfinite_streak_start = self.true_global_step
            self._nonfinite_in_a_row += 1
            logger.warning(
                "step %d: non-finite %s; step skipped (%d in a row)",
                self.true_global_step,
                ", ".join(bad),
                self._nonfinite_in_a_row,
            )
            if self._nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
                raise TrainingDiverged(
                    f"NaN/inf for {self._nonfinite_in_a_row} steps in a row at step {self.true_global_step} "
                    f"({', '.join(bad)}); try a lower learning rate or loss weights"
                )
            return None
        self._nonfinite_in_a_row = 0
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach())
        self.log("train/loss", total.detach(), prog_bar=True)
        return total

    def training_losses(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """Weighted loss terms of one step, by name (their sum is minimised)."""
        raise NotImplementedError

    def main_loss_terms(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """The terms of :meth:`training_losses` that the main optimizer minimises (a system with a separately
        optimised part takes its terms out here)."""
        return self.training_losses(batch)

    def weighted(self, name: str, value: Tensor, terms: Dict[str, Tensor]) -> None:
        """Add ``lambda_<name> × value`` to ``terms`` when that weight is non-zero (also logs the raw value)."""
        weight = self.C(self.cfg.loss.get(f"lambda_{name}", 0.0))
        if weight == 0:
            return
        self.log(f"train/raw_{name}", value.detach())
        terms[f"loss_{name}"] = terms.get(f"loss_{name}", 0.0) + weight * value

    def loss_enabled(self, name: str) -> bool:
        return self.C(self.cfg.loss.get(f"lambda_{name}", 0.0)) != 0

    # ----- optimisation --------------------------------------------------------------------------------------
    def optimizer_param_groups(self) -> List[Dict[str, Any]]:
        """Parameter groups: ``system.optimizer.params`` maps module paths to per-group options."""
        groups_cfg = dict(config_to_primitive(self.cfg.optimizer.get("params", None)) or {})
        groups, claimed = [], set()
        for path, options in groups_cfg.items():
            module = self
            for part in path.split("."):
                module = getattr(module, part, None)
                if module is None:
                    raise ConfigError(f"system.optimizer.params.{path}: no such module in this system")
            params = [p for p in module.parameters() if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            groups.append({"params": params, "name": path, **(options or {})})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        if rest:
            groups.append({"params": rest, "name": "default"})
        return groups

    def configure_optimizers(self) -> Any:
        opt_cfg = {k: v for k, v in config_to_primitive(self.cfg.optimizer).items() if k != "params"}
        optimizer = build_optimizer(opt_cfg, self.optimizer_param_groups())
        if self.cfg.scheduler is None:
            return optimizer
        sched_cfg = dict(config_to_primitive(self.cfg.scheduler))
        name = sched_cfg.get("name")
        sched_cls = getattr(torch.optim.lr_scheduler, str(name), None)
        if sched_cls is None:
            raise ConfigError(
                f"unknown scheduler {name!r} in system.scheduler.name; use a torch.optim.lr_scheduler class"
            )
        try:
            scheduler = sched_cls(optimizer, **sched_cfg.get("args", {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad system.scheduler.args for {name}: {str(e).splitlines()[0]}") from None
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- outputs -------------------------------------------------------------------------------------------
    def set_save_dir(self, path: str) -> None:
        self._save_dir = path

    def save_path(self, relative: str) -> str:
        """Absolute path of the file ``relative`` inside the trial's ``save/`` folder (parent folders created)."""
        path = os.path.join(self.save_dir(), relative)
        ensure_folder(os.path.dirname(path))  # never through a link out of the trial
        return path

    def save_dir(self, relative: str = "") -> str:
        """Absolute path of the folder ``relative`` inside the trial's ``save/`` folder (created)."""
        if self._save_dir is None:
            raise RuntimeError("set_save_dir() was not called")
        path = os.path.join(self._save_dir, relative)
        ensure_folder(path)
        return path


def visualize_depth(depth: Tensor, opacity: Tensor) -> Tensor:
    """(H, W, 1) depth → (H, W, 3) grey image in [0, 1] (near = bright), normalised over confident pixels.

    The renderer's depth is Σ wᵢtᵢ (not divided by the opacity); it is divided here for display.
    """
    d = depth[..., 0] / opacity[..., 0].clamp_min(1e-6)
    valid = opacity[..., 0] > 0.5
    values = d[valid] if valid.any() else d.flatten()
    lo, hi = torch.quantile(values.float(), 0.02), torch.quantile(values.float(), 0.98)
    img = 1.0 - ((d - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    img = img * (opacity[..., 0] > 0.05)
    return img[..., None].expand(*img.shape, 3)


def visual_row(out: Dict[str, Tensor], k: int = 0, extra: Sequence[Tensor] = (), normal: bool = False) -> Tensor:
    """(H, n·W, 3) panels of view ``k`` of a render side by side: [extra…, rgb, (normal), depth, opacity]; the
    normal panel when ``normal`` and the render has ``comp_normal``. The test frame is ``visual_row(out, k)``."""
    rgb = out["comp_rgb"][k].clamp(0, 1)
    panels = [*extra, rgb]
    if normal and "comp_normal" in out:
        panels.append(out["comp_normal"][k].clamp(0, 1))
    panels.append(visualize_depth(out["depth"][k], out["opacity"][k]))
    panels.append(out["opacity"][k].clamp(0, 1).expand(*rgb.shape[:2], 3))
    return torch.cat([p.to(rgb) for p in panels], dim=1)


def write_anchor_views(folder: str, anchors: Any) -> None:
    """``anchor_{k:02d}.png`` and ``anchors.json`` (the record, with each anchor's camera and file name) in
    ``folder``: the guidance's :class:`~threestudio.models.guidance.zeronvs_guidance.AnchorViews`."""
    from threestudio.utils.image import save_image
    from threestudio.utils.io import write_json_atomic

    listed = []
    for k, (image, camera) in enumerate(zip(anchors.images, anchors.cameras)):
        name = f"anchor_{k:02d}.png"
        save_image(os.path.join(folder, name), image)
        listed.append({"file": name, **camera})
    write_json_atomic(os.path.join(folder, "anchors.json"), {**anchors.record, "anchors": listed})


class BaseLift3DSystem(BaseSystem):
    """A NeRF (geometry + material + background + renderer) with validation/test renders and mesh export."""

    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = "implicit-volume"
        geometry: dict = field(default_factory=dict)
        material_type: str = "no-material"
        material: dict = field(default_factory=dict)
        background_type: str = "solid-color-background"
        background: dict = field(default_factory=dict)
        renderer_type: str = "nerf-volume-renderer"
        renderer: dict = field(default_factory=dict)
        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)
        # --train ends with the --export pass too: the mesh in save/it{step}-export/, shown in the report
        export_after_train: bool = False
        test_video_fps: int = 30

    cfg: Config

    def configure(self) -> None:
        fps = self.cfg.test_video_fps
        if not 1 <= fps <= 1000:
            raise ConfigError(f"config key system.test_video_fps must lie in [1, 1000], got {fps}")
        # The SDS guidance, when a system uses one (see load_guidance). Not an nn.Module child: the diffusion
        # weights never go into checkpoints and Lightning never moves them; on_fit_start does. Its section is
        # parsed and checked now, in every mode; the weights load only when a mode needs them.
        self._guidance = None
        self._guidance_cfg = None
        self._anchors_written = None  # the guidance's anchor views last written (they are generated once)
        if self.uses_guidance():
            self._guidance_cfg = threestudio.find(self.cfg.guidance_type).parse_config(self.cfg.guidance)
        elif self.cfg.guidance:
            raise ConfigError(
                f"system.guidance ({', '.join(sorted(self.cfg.guidance))}) is not used by this configuration; "
                f"{self.guidance_hint()}"
            )
        self.geometry = threestudio.find(self.cfg.geometry_type)(self.cfg.geometry, fast_paths=self.cfg.fast_paths)
        self.material = threestudio.find(self.cfg.material_type)(self.cfg.material)
        self.background = threestudio.find(self.cfg.background_type)(self.cfg.background)
        self.renderer = threestudio.find(self.cfg.renderer_type)(
            self.cfg.renderer, geometry=self.geometry, material=self.material, background=self.background,
            fast_paths=self.cfg.fast_paths,
        )
        # a plain attribute, not a Lightning optimizer: stepped by on_train_batch_end (see step_proposal_optimizer)
        self.proposal_optimizer = self._build_proposal_optimizer()
        self._proposal_loss: Optional[Tensor] = None

    def uses_guidance(self) -> bool:
        """Whether this configuration builds ``guidance_type`` (then ``system.guidance`` is parsed at once)."""
        return bool(self.cfg.guidance_type)

    def guidance_hint(self) -> str:
        """What to do about a ``system.guidance`` section that :meth:`uses_guidance` says is unused."""
        return "remove it, or set system.guidance_type"

    def load_guidance(self, conditioning: Dict[str, Tensor]) -> None:
        """Build ``guidance_type`` from ``system.guidance`` and give it the conditioning view(s) of the datamodule."""
        self._guidance = threestudio.find(self.cfg.guidance_type)(self._guidance_cfg)
        self._guidance.set_conditions(conditioning["images"], conditioning["c2w"], conditioning["fov_deg"])

    def sds_step(self, views: Dict[str, Any], terms: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The one SDS step of every system: render ``views``, score the renders with the guidance, add
        ``lambda_sds · loss_sds`` to ``terms`` and log the guidance's diagnostics (``guidance/*``). Returns the
        render, for the caller's regularisers."""
        out = self(views)
        guidance_out = self._guidance(out["comp_rgb"], views)
        self._write_new_anchor_views()
        self.weighted("sds", guidance_out["loss_sds"], terms)
        for key, value in guidance_out.items():
            # 0-dim device tensors, logged as they are: Lightning reads them when it writes the logs, so the
            # step never waits for the GPU (a Python number would be copied to the device, which syncs)
            if key != "loss_sds" and isinstance(value, Tensor):
                self.log(f"guidance/{key}", value if value.is_floating_point() else value.float())
        return out

    def _write_new_anchor_views(self) -> None:
        """Write the guidance's SDS anchor views to ``save/anchors/`` (rank 0) once, when it has generated them."""
        anchors = getattr(self._guidance, "anchors", None)
        if anchors is None or anchors is self._anchors_written:
            return
        self._anchors_written = anchors
        if self._save_dir is None:
            logger.warning("no save dir set (set_save_dir): the SDS anchor views are not written to disk")
        elif self._trainer is None or self.trainer.global_rank == 0:
            folder = self.save_dir("anchors")
            write_anchor_views(folder, anchors)
            logger.info("saved %d SDS anchor views to %s", len(anchors.cameras), folder)

    def on_fit_start(self) -> None:
        if self._guidance is not None:
            self._guidance.to(self.device)

    def updateable_children(self) -> Sequence[Updateable]:
        """The geometry, material, background, renderer and (when built) the guidance."""
        parts = [self.geometry, self.material, self.background, self.renderer]
        return parts + ([self._guidance] if self._guidance is not None else [])

    # ----- the proposal networks' own optimizer ---------------------------------------------------------------
    def _build_proposal_optimizer(self) -> Optional[torch.optim.Optimizer]:
        """ZeroNVS's separate optimizer for the proposal networks (``renderer.prop_optimizer_config``, e.g. Adam lr
        0.005, eps 1e-15, weight decay 1e-6 and torch's default betas (0.9, 0.999)), or None: without that config
        the proposal networks are a part of the main optimizer and ``loss_proposal`` of the main loss."""
        proposal = getattr(self.renderer, "proposal_network", None)
        prop_cfg = getattr(self.renderer.cfg, "prop_optimizer_config", None)
        params = [p for p in proposal.parameters() if p.requires_grad] if proposal is not None else []
        if not params or prop_cfg is None:
            return None
        try:
            return build_optimizer(prop_cfg, params)
        except ConfigError as e:
            raise ConfigError(str(e).replace("system.optimizer", "system.renderer.prop_optimizer_config")) from None

    def optimizer_param_groups(self) -> List[Dict[str, Any]]:
        """The main optimizer's groups, without the proposal networks when they have their own optimizer."""
        groups = super().optimizer_param_groups()
        if self.proposal_optimizer is None:
            return groups
        prop_ids = {id(p) for group in self.proposal_optimizer.param_groups for p in group["params"]}
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in prop_ids]
        return [g for g in groups if g["params"]]

    def main_loss_terms(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """:meth:`training_losses` without ``loss_proposal`` when the proposal networks have their own optimizer:
        that term is kept for :meth:`step_proposal_optimizer`, after the main step."""
        terms = self.training_losses(batch)
        self._proposal_loss = terms.pop("loss_proposal", None) if self.proposal_optimizer is not None else None
        return terms

    def step_proposal_optimizer(self) -> None:
        """One step of the proposal optimizer on this training step's proposal loss (the sum over the step's
        renders), as ZeroNVS's renderer does in ``update_step_end``: after the main step, whether or not the main
        step was skipped (non-finite loss, or a GradScaler overflow), with its own unscaled fp32 backward. A
        non-finite proposal loss skips this update only (ZeroNVS would write NaN into the proposal network)."""
        loss, self._proposal_loss = self._proposal_loss, None
        if loss is None or self.proposal_optimizer is None:
            return
        if not bool(torch.isfinite(loss)):  # one host synchronisation, as ZeroNVS's loss.item()
            logger.warning("step %d: non-finite proposal loss; proposal update skipped", self.true_global_step)
            return
        self.log("train/loss_proposal", loss.detach())
        with torch.enable_grad():
            self.proposal_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.proposal_optimizer.step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_proposal_optimizer()
        super().on_train_batch_end(outputs, batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.proposal_optimizer is not None:
            checkpoint["proposal_optimizer"] = self.proposal_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.proposal_optimizer is not None and "proposal_optimizer" in checkpoint:
            self.proposal_optimizer.load_state_dict(checkpoint["proposal_optimizer"])

    # the batch keys the renderer reads; any other key (e.g. a stray `shading`) never reaches the material
    RENDER_KEYS = ("rays_o", "rays_d", "light_positions")

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        return self.renderer(**{key: batch[key] for key in self.RENDER_KEYS if key in batch})

    # ----- validation / test (the test pass: threestudio.systems.heldout.HeldOutMetricsMixin) ------------------
    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        from threestudio.utils.image import save_image

        out = self(batch)
        extra = [batch["rgb"][0]] if "rgb" in batch else []
        index = int(batch["index"][0]) if "index" in batch else batch_idx
        image = visual_row(out, 0, extra, normal=True)
        save_image(self.save_path(f"it{self.true_global_step}-val/{index:04d}.png"), image)

    def on_test_epoch_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        from threestudio.utils.image import load_image, save_video

        folder = self.save_dir(f"it{self.true_global_step}-test")
        frames = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
        if frames:
            video = self.save_path(f"it{self.true_global_step}-test.mp4")
            save_video(
                video,
                (load_image(os.path.join(folder, f))[..., :3] for f in frames),
                fps=self.cfg.test_video_fps,
                min_height=VIDEO_MIN_HEIGHT,
                labels=TEST_PANELS,
            )
            logger.info("test video: %s (%d frames, %.1f s)", video, len(frames), len(frames) / self.cfg.test_video_fps)

    # ----- export --------------------------------------------------------------------------------------------
    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        return None

    def on_predict_epoch_end(self) -> None:
        if self.trainer.global_rank != 0:
            return
        self.export_mesh()

    def check_export_config(self) -> None:
        """The exporter's values (``system.exporter.*``, e.g. a resolution whose grid does not fit in memory),
        checked before anything is written; builds no grid."""
        threestudio.find(self.cfg.exporter_type)(self.cfg.exporter, self.geometry, self.material)

    def export_mesh(self) -> List[str]:
        """Run the exporter into ``save/it{step}-export/`` (it logs what it wrote); returns the written paths."""
        exporter = threestudio.find(self.cfg.exporter_type)(self.cfg.exporter, self.geometry, self.material)
        folder = os.path.join(self.save_dir(), f"it{self.true_global_step}-export")  # the exporter creates it
        return exporter.export(folder)
