"""Wire an experiment together: config → trial folder → datamodule + system → Lightning Trainer.

``launch.py`` parses the command line and calls :func:`run`; everything here raises
:class:`~threestudio.utils.errors.UserError` for bad input before anything is written.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from typing import Any, Sequence

import threestudio
from threestudio.utils.config import config_to_primitive, dump_config, load_config
from threestudio.utils.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

MODES = ("train", "validate", "test", "export")
_TIMESTAMP_ENV = "THREESTUDIO_TRIAL_TIMESTAMP"  # shared with DDP worker processes


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def _check_kwargs(target: Any, kwargs: dict, section: str) -> None:
    params = inspect.signature(target).parameters
    for key in kwargs:
        if key not in params:
            valid = ", ".join(p for p in params if p not in ("self", "args", "kwargs"))
            raise ConfigError(f"unknown config key '{section}.{key}'; valid keys: {valid}")


def trainer_kwargs(cfg_trainer: dict, n_gpus: int) -> dict:
    """Lightning Trainer arguments from ``trainer.*``, with the device picked from what is available.

    Without CUDA the run uses the CPU; 16-bit mixed precision (CUDA only) then falls back to 32-bit.
    """
    import torch
    from lightning.pytorch import Trainer

    kwargs = dict(config_to_primitive(cfg_trainer))
    _check_kwargs(Trainer.__init__, kwargs, "trainer")
    if "accelerator" not in kwargs:
        kwargs["accelerator"] = "gpu" if torch.cuda.is_available() else "cpu"
    if "devices" not in kwargs:
        kwargs["devices"] = n_gpus if kwargs["accelerator"] in ("gpu", "cuda") else 1
    # analytic normals need autograd while rendering validation/test views
    kwargs.setdefault("inference_mode", False)
    on_cpu = kwargs["accelerator"] == "cpu" or (kwargs["accelerator"] == "auto" and not torch.cuda.is_available())
    if on_cpu and str(kwargs.get("precision", "32")) in ("16-mixed", "16", "16-true"):
        logger.info("precision %s needs CUDA; using 32-bit on the CPU", kwargs["precision"])
        kwargs["precision"] = "32-true"
    return kwargs


def resolve_data_config(cfg: Any) -> None:
    """Let the datamodule fill in values it derives from its input (``data.default_fovy_deg: auto`` → the
    image's EXIF fov), in place, so that ``configs/parsed.yaml`` records what the run uses."""
    resolve = getattr(threestudio.find(cfg.data_type), "resolve_config", None)
    if resolve is not None:
        cfg.data = resolve(cfg.data)


def run(config_path: str, mode: str, cli_args: Sequence[str] = (), n_gpus: int = 1) -> str:
    """Run ``mode`` (train | validate | test | export) for the config. Returns the trial folder."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    started = time.perf_counter()
    timestamp = os.environ.get(_TIMESTAMP_ENV)
    overrides = {"timestamp": timestamp} if timestamp else {}
    cfg = load_config(config_path, cli_args=cli_args, n_gpus=n_gpus, **overrides)
    if cfg.use_timestamp:
        os.environ[_TIMESTAMP_ENV] = cfg.timestamp

    resume = cfg.resume
    if resume is not None and not os.path.isfile(resume):
        raise UserError(f"resume checkpoint not found: {resume}")
    if not cfg.data_type or not cfg.system_type:
        raise ConfigError("the config must set data_type and system_type")
    resolve_data_config(cfg)

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from threestudio.utils.checkpoint_io import AtomicCheckpointIO

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system)
    # Everything that can fail on user input (images, checkpoints, guidance) fails here, before any write.
    datamodule.setup("fit" if mode == "train" else mode)
    system.prepare(mode, datamodule)
    t_kwargs = trainer_kwargs(cfg.trainer, n_gpus)
    ckpt_kwargs = dict(config_to_primitive(cfg.checkpoint))
    _check_kwargs(ModelCheckpoint.__init__, ckpt_kwargs, "checkpoint")

    trial_dir = cfg.trial_dir
    resuming_here = resume is not None and os.path.abspath(resume).startswith(os.path.abspath(trial_dir) + os.sep)
    if _rank() == 0:
        if os.path.exists(trial_dir) and not resuming_here:
            raise UserError(
                f"trial folder {trial_dir} already exists; pick another tag/name, set use_timestamp=true, "
                f"or pass resume={trial_dir}/ckpts/last.ckpt to continue or render it"
            )
        os.makedirs(trial_dir, exist_ok=True)
        parsed = os.path.join(trial_dir, "configs", "parsed.yaml")
        if mode == "train" or not os.path.exists(parsed):
            dump_config(parsed, cfg)
    system.set_save_dir(os.path.join(trial_dir, "save"))
    logger.info("trial folder: %s", trial_dir)

    callbacks = []
    loggers: Any = False
    if mode == "train":
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(trial_dir, "ckpts"), **ckpt_kwargs))
        loggers = [
            TensorBoardLogger(trial_dir, name="tb_logs", version=""),
            CSVLogger(trial_dir, name="csv_logs", version=""),
        ]
    trainer = pl.Trainer(
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=trial_dir,
        **t_kwargs,
    )
    if mode == "train":
        trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
        trainer.test(system, datamodule=datamodule)
    elif mode == "validate":
        trainer.validate(system, datamodule=datamodule, ckpt_path=resume)
    elif mode == "test":
        trainer.test(system, datamodule=datamodule, ckpt_path=resume)
    else:
        trainer.predict(system, datamodule=datamodule, ckpt_path=resume, return_predictions=False)
    if mode in ("train", "test") and _rank() == 0:
        from threestudio.utils.report import finish_run

        device = f"{t_kwargs['accelerator']} x{t_kwargs['devices']}"
        logger.info("report: %s", finish_run(trial_dir, mode, time.perf_counter() - started, device))
    return trial_dir
