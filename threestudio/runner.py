"""Wire an experiment together: config → checks → trial folder → datamodule + system → Lightning Trainer.

``launch.py`` parses the command line and calls :func:`run`. Bad input raises
:class:`~threestudio.utils.errors.UserError` before anything is written: the config, the ``trainer.*`` and
``checkpoint.*`` values, the optimizer, ``system.weights`` and the ``resume`` checkpoint (read without running
code from it and checked to fit the system) are all checked first. Then the trial folder is created (or, when
resuming, found: the trial a checkpoint lives in) and locked for the whole run (:mod:`threestudio.utils.trial_lock`).
A resume keeps what the trial holds: its config goes to ``configs/parsed-resume-N.yaml`` and its CSV log to
``csv_logs/resume-N/``.
"""

from __future__ import annotations

import errno
import glob
import inspect
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import threestudio
from threestudio.utils.config import config_to_primitive, dump_config, load_config
from threestudio.utils.errors import ConfigError, TrainingDiverged, UserError

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_trainer_values(kwargs: dict) -> None:
    """ConfigError for ``trainer.*`` values Lightning would only fail on (or loop forever with) later."""
    steps = kwargs.get("max_steps", -1)  # absent: Lightning's default (max_epochs decides)
    if not _is_int(steps) or steps == 0 or steps < -1:
        raise ConfigError(f"trainer.max_steps must be a positive integer, got {steps!r}")
    explicit_forever = "max_steps" in kwargs and steps == -1
    if explicit_forever and kwargs.get("max_time") is None and kwargs.get("max_epochs") in (None, -1):
        raise ConfigError(
            "trainer.max_steps=-1 would train forever: set a positive trainer.max_steps (or trainer.max_time)"
        )
    for key in ("log_every_n_steps", "accumulate_grad_batches", "check_val_every_n_epoch"):
        value = kwargs.get(key, 1)
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(f"trainer.{key} must be an integer >= 1, got {value!r}")
    for key in ("max_epochs", "num_sanity_val_steps"):
        value = kwargs.get(key)
        if value is not None and (not _is_int(value) or value < -1):
            raise ConfigError(f"trainer.{key} must be an integer >= -1, got {value!r}")
    interval = kwargs.get("val_check_interval")
    if interval is not None:
        valid = _is_int(interval) and interval >= 1 or isinstance(interval, float) and 0.0 < interval <= 1.0
        if not valid:
            raise ConfigError(
                f"trainer.val_check_interval must be a number of steps >= 1 or a fraction in (0, 1], got {interval!r}"
            )


def check_checkpoint_values(kwargs: dict) -> None:
    """ConfigError for ``checkpoint.*`` values ModelCheckpoint would reject with a traceback."""
    for key in ("every_n_train_steps", "every_n_epochs"):
        value = kwargs.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            raise ConfigError(f"checkpoint.{key} must be an integer >= 0 (0 = off), got {value!r}")
    top_k = kwargs.get("save_top_k", 1)
    if not _is_int(top_k) or top_k < -1:
        raise ConfigError(f"checkpoint.save_top_k must be an integer >= -1, got {top_k!r}")
    if kwargs.get("save_last") not in (None, True, False, "link"):
        raise ConfigError(f"checkpoint.save_last must be true, false or link, got {kwargs['save_last']!r}")


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
    from threestudio.utils.progress import is_quiet

    if is_quiet():  # --quiet (or THREESTUDIO_QUIET=1): no progress bar or model table, whatever the config says
        kwargs["enable_progress_bar"] = False
        kwargs["enable_model_summary"] = False
    on_cpu = kwargs["accelerator"] == "cpu" or (kwargs["accelerator"] == "auto" and not torch.cuda.is_available())
    if on_cpu and str(kwargs.get("precision", "32")) in ("16-mixed", "16", "16-true"):
        logger.info("precision %s needs CUDA; using 32-bit on the CPU", kwargs["precision"])
        kwargs["precision"] = "32-true"
    return kwargs


def _ckpt_trial(resume: str) -> Optional[str]:
    """The trial folder a checkpoint lives in (``TRIAL/ckpts/X.ckpt`` beside ``TRIAL/configs/``), else None."""
    ckpt_dir = os.path.dirname(os.path.abspath(resume))
    trial = os.path.dirname(ckpt_dir)
    if os.path.basename(ckpt_dir) == "ckpts" and os.path.isdir(os.path.join(trial, "configs")):
        return trial
    return None


def _inside(path: str, folder: str) -> bool:
    return os.path.abspath(path).startswith(os.path.abspath(folder) + os.sep)


@dataclass
class TrialPlan:
    """Where a run writes: ``trial_dir``, and whether it continues that existing trial (``existing``)."""

    trial_dir: str
    existing: bool


def plan_trial(cfg: Any, config_path: str, is_owner: bool = True) -> TrialPlan:
    """The trial folder of the run: the config's, or — with ``resume=`` — the trial the checkpoint lives in.

    A resume continues the trial its checkpoint is in when that is the config's trial, or when the config is
    that trial's own ``configs/*.yaml`` (a copied or moved trial). Otherwise the run is a new trial, whose
    folder must not exist yet (checked by the owner, rank 0, only: DDP workers start after it created it).
    """
    trial_dir = cfg.trial_dir
    if cfg.resume is not None:
        ckpt_trial = _ckpt_trial(cfg.resume)
        if _inside(cfg.resume, trial_dir):
            return TrialPlan(trial_dir, existing=True)
        if ckpt_trial is not None and _inside(config_path, ckpt_trial):
            if os.path.abspath(ckpt_trial) != os.path.abspath(trial_dir):
                logger.info("continuing the trial the checkpoint lives in: %s", ckpt_trial)
            return TrialPlan(ckpt_trial, existing=True)
    if is_owner and os.path.lexists(trial_dir):
        last = os.path.join(trial_dir, "ckpts", "last.ckpt")
        follow = (
            f"or pass resume={last} to continue or render it"
            if os.path.isfile(last)
            else "or remove it (it holds no checkpoint to resume from)"
        )
        raise UserError(
            f"trial folder {trial_dir} already exists; pick another tag/name, set use_timestamp=true, {follow}"
        )
    return TrialPlan(trial_dir, existing=False)


def check_resume_path(resume: Optional[str]) -> None:
    if resume is None:
        return
    if os.path.isdir(resume):
        hint = os.path.join(resume, "ckpts", "last.ckpt") if os.path.isdir(os.path.join(resume, "ckpts")) else None
        hint = hint or os.path.join(resume, "last.ckpt")
        raise UserError(f"resume={resume} is a folder; pass the checkpoint file, e.g. resume={hint}")
    if not os.path.isfile(resume):
        raise UserError(f"resume checkpoint not found: {resume}")


def _resume_number(trial_dir: str) -> int:
    """1 + the number of earlier resumes of the trial (its ``configs/parsed-resume-N.yaml`` and
    ``csv_logs/resume-N/``: a number either of them used is never used again)."""
    root = glob.escape(trial_dir)
    done = [
        int(m.group(1))
        for p in glob.glob(os.path.join(root, "configs", "parsed-resume-*.yaml"))
        + glob.glob(os.path.join(root, "csv_logs", "resume-*"))
        if (m := re.search(r"resume-(\d+)(\.yaml)?$", p))
    ]
    return max(done, default=0) + 1


def _write_trial_config(cfg: Any, plan: TrialPlan, mode: str) -> Optional[int]:
    """Write the run's config into the trial; returns the resume number N of a training resume, else None.

    A new trial gets ``configs/parsed.yaml``; a training resume ``configs/parsed-resume-N.yaml`` (parsed.yaml and
    the earlier ones are kept), also when the trial lost its parsed.yaml: its logs then go to ``resume-N`` too,
    so nothing the trial holds is replaced. Rendering an existing trial writes nothing (unless it has no
    parsed.yaml).
    """
    parsed = os.path.join(plan.trial_dir, "configs", "parsed.yaml")
    if plan.existing and mode == "train":
        number = _resume_number(plan.trial_dir)
        if not os.path.exists(parsed):
            logger.warning("trial %s has no configs/parsed.yaml; this resume's config goes to "
                           "configs/parsed-resume-%d.yaml (its earlier logs are kept)", plan.trial_dir, number)
        dump_config(os.path.join(plan.trial_dir, "configs", f"parsed-resume-{number}.yaml"), cfg)
        return number
    if not os.path.exists(parsed):
        dump_config(parsed, cfg)
    return None


def _build_trainer(
    cfg: Any,
    mode: str,
    trial_dir: str,
    resume_number: Optional[int],
    t_kwargs: Dict[str, Any],
    preloaded: Dict[str, Any],
    extra_callbacks: Sequence[Any] = (),
) -> Any:
    import lightning.pytorch as pl

    from threestudio.utils.checkpoint_io import AtomicCheckpointIO, FiniteModelCheckpoint
    from threestudio.utils.progress import lightning_progress_callbacks
    from threestudio.utils.trial_loggers import TrialCSVLogger as CSVLogger
    from threestudio.utils.trial_loggers import TrialTensorBoardLogger as TensorBoardLogger

    callbacks = list(extra_callbacks) + lightning_progress_callbacks(t_kwargs.get("enable_progress_bar"))
    loggers = False
    if mode == "train":
        ckpt_kwargs = dict(config_to_primitive(cfg.checkpoint))
        callbacks.append(FiniteModelCheckpoint(dirpath=os.path.join(trial_dir, "ckpts"), **ckpt_kwargs))
        csv_version = "" if resume_number is None else f"resume-{resume_number}"
        loggers = [
            TensorBoardLogger(trial_dir, name="tb_logs", version=""),
            CSVLogger(trial_dir, name="csv_logs", version=csv_version),
        ]
    return pl.Trainer(
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO(preloaded=preloaded)],
        default_root_dir=trial_dir,
        **t_kwargs,
    )


def check_devices(kwargs: dict) -> None:
    """ConfigError when ``trainer.accelerator`` / ``trainer.devices`` ask for devices this machine lacks (more
    processes than CPU cores on the CPU; Lightning's own checks for GPUs), before the trial exists."""
    from lightning.pytorch import Trainer

    devices, accelerator = kwargs.get("devices"), kwargs.get("accelerator")
    cores = os.cpu_count() or 1
    if accelerator == "cpu" and _is_int(devices) and devices > cores:
        raise ConfigError(
            f"trainer.devices={devices} asks for {devices} processes on the CPU, but this machine has {cores} CPU "
            "core(s); set trainer.devices to at most that (1 is usual on the CPU)"
        )
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                **{k: v for k, v in kwargs.items() if k in ("accelerator", "devices", "strategy", "num_nodes",
                                                            "precision")})
    except Exception as e:
        raise ConfigError(
            f"trainer.accelerator={accelerator} / trainer.devices={devices}: {str(e).splitlines()[0]}"
        ) from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _check_before_writing(cfg: Any, mode: str, system: Any, n_gpus: int) -> Dict[str, Any]:
    """Check everything left that can fail on user input; returns the resume checkpoint read (by path)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    kwargs = trainer_kwargs(cfg.trainer, n_gpus)
    if _rank() == 0:
        check_devices(kwargs)
    ckpt_kwargs = dict(config_to_primitive(cfg.checkpoint))
    _check_kwargs(ModelCheckpoint.__init__, ckpt_kwargs, "checkpoint")
    if mode == "train":  # the values only training uses
        check_trainer_values(kwargs)
        check_checkpoint_values(ckpt_kwargs)
        system.configure_optimizers()  # bad optimizer/scheduler arguments fail here, not inside fit
    exports = mode == "export" or (mode == "train" and getattr(system.cfg, "export_after_train", False))
    if exports and hasattr(system, "check_export_config"):
        system.check_export_config()
    if cfg.resume is None:
        return {}
    state = system.check_resume_checkpoint(cfg.resume)
    step, max_steps = state.get("global_step"), kwargs.get("max_steps")
    if mode == "train" and isinstance(step, int) and isinstance(max_steps, int) and 0 < max_steps <= step:
        raise ConfigError(
            f"resume={cfg.resume} holds step {step}, and trainer.max_steps={max_steps}: there is nothing left to "
            f"train; set trainer.max_steps above {step} to continue, or render it with --test"
        )
    return {cfg.resume: state}


def resolve_data_config(cfg: Any) -> None:
    """Let the datamodule fill in values it derives from its input (``data.default_fovy_deg: auto`` → the
    image's EXIF fov), in place, so that ``configs/parsed.yaml`` records what the run uses."""
    resolve = getattr(threestudio.find(cfg.data_type), "resolve_config", None)
    if resolve is not None:
        cfg.data = resolve(cfg.data)


def check_trial_links(trial_dir: str) -> None:
    """UserError when the existing trial holds a symbolic link leading out of it: its runs would write (or
    truncate) files outside the trial through it."""
    from threestudio.utils.io import links_leaving

    found = links_leaving(trial_dir)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(
            f"trial {trial_dir} holds {found[0]}{more}, a link to a file or folder outside the trial; a run writes "
            "only inside its trial: remove the link(s), or copy the trial without them"
        )


def create_trial_folder(trial_dir: str) -> None:
    """Create the new trial's folder (atomically: of two runs racing for it, one gets the error)."""
    try:
        os.makedirs(os.path.dirname(trial_dir) or ".", exist_ok=True)
        os.mkdir(trial_dir)
    except FileExistsError:
        raise UserError(f"trial folder {trial_dir} already exists (created by another run just now)") from None
    except OSError as e:
        raise UserError(
            f"cannot create the trial folder {trial_dir}: {e.strerror or e} ({e.filename or trial_dir}); set "
            "exp_root_dir to a folder you can write"
        ) from None


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _has_checkpoint(trial_dir: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(trial_dir), "ckpts", "*.ckpt")))


def _write_failure(error: BaseException, plan: TrialPlan) -> BaseException:
    """The error to show for ``error`` raised while the run wrote its trial.

    A full disk names the file; a new trial left without any checkpoint is removed (no trial rather than a
    broken one). A folder the run may not write names it. Anything else is ``error`` itself.
    """
    from threestudio.utils.checkpoint_io import DiskFullError

    filename = getattr(error, "filename", None)
    errno_ = getattr(error, "errno", None)
    full = isinstance(error, DiskFullError) or (isinstance(error, OSError) and errno_ in _NO_SPACE)
    if full:
        where = f" writing {filename}" if filename else ""
        detail = str(error) if isinstance(error, DiskFullError) else f"no space left on the device{where}"
        if not plan.existing and not _has_checkpoint(plan.trial_dir):
            shutil.rmtree(plan.trial_dir, ignore_errors=True)
            return UserError(f"{detail}; the new trial {plan.trial_dir} was removed (it held no checkpoint yet) — "
                             "free space and run again")
        if isinstance(error, DiskFullError):
            return error
        last = os.path.join(plan.trial_dir, "ckpts", "last.ckpt")
        return UserError(f"{detail}; free space, then run again (resume={last} continues or renders the trial)")
    if isinstance(error, OSError) and errno_ in _NOT_WRITABLE:
        return UserError(
            f"cannot write {filename or plan.trial_dir}: {error.strerror}; the trial's folder must be writable "
            "(copy the trial somewhere writable, or set exp_root_dir)"
        )
    return error


def run(
    config_path: str,
    mode: str,
    cli_args: Sequence[str] = (),
    n_gpus: int = 1,
    transform: Optional[Callable[[Any], None]] = None,
    callbacks: Sequence[Any] = (),
) -> str:
    """Run ``mode`` (train | validate | test | export) for the config. Returns the trial folder.

    SIGTERM, SIGHUP and SIGINT stop the run with :class:`~threestudio.utils.stop_signals.RunInterrupted`
    (:mod:`threestudio.utils.stop_signals`), whose message says where it stopped and how to continue.

    For tools built on the runner (``scripts/oracle_run.py``): ``transform(cfg)`` edits the loaded config in place
    before anything else reads it (not the trial folder keys), and ``callbacks`` join the Trainer's.
    """
    from threestudio.utils.stop_signals import RunInterrupted, stop_on_signals

    with stop_on_signals() as stop:
        try:
            return _run(config_path, mode, cli_args, n_gpus, stop, transform, callbacks)
        except (KeyboardInterrupt, SystemExit, Exception) as e:
            # after a signal, whatever the interrupted code raised (e.g. a library's state left half-built while
            # the config loaded) is the stop, not an error of the user's input
            if stop.signum is None or isinstance(e, RunInterrupted):
                raise
            raise RunInterrupted(stop.signum, _stopped_message(stop, config_path, mode)) from e


def _stopped_message(stop: Any, config_path: str, mode: str) -> str:
    """Where a run stopped by a signal stopped, and how to continue (one line)."""
    from threestudio.utils.stop_signals import signal_name

    name = signal_name(stop.signum)
    trial = stop.trial_dir
    if trial is None or not os.path.isdir(trial):
        return f"stopped by {name} before the trial folder was created; nothing was written"
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    config = parsed if os.path.isfile(parsed) else config_path
    last = os.path.join(trial, "ckpts", "last.ckpt")
    stage = stop.stage
    if stage == "test":
        done, total = stop.views_done, stop.views_total
        if total and done == total:
            return f"stopped by {name} after the test pass of {trial} had rendered all {total} views"
        views = f" after {done} of {total} views" if done is not None and total else ""
        again = (f"render them again with: python launch.py --config {config} --test resume={last}"
                 if os.path.isfile(last) else "no checkpoint to render from")
        return (f"stopped by {name}: the test pass of {trial} was interrupted{views}, so save/ holds an "
                f"incomplete set of test frames and no video; {again}")
    if stage == "train":
        if not os.path.isfile(last):
            return (f"stopped by {name} during training, before any checkpoint was written; {trial} holds none: "
                    "remove it and start again")
        step = stop.saved_step
        holds = f"last.ckpt holds step {step}" if step is not None else "last.ckpt holds the latest saved step"
        return (f"stopped by {name} during training; {holds}; continue with: python launch.py --config {config} "
                f"--train resume={last}")
    return f"stopped by {name} ({mode} of {trial}); nothing of the trial was removed; run it again to finish"


def _run(
    config_path: str,
    mode: str,
    cli_args: Sequence[str],
    n_gpus: int,
    stop: Any,
    transform: Optional[Callable[[Any], None]],
    callbacks: Sequence[Any],
) -> str:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    started = time.perf_counter()
    timestamp = os.environ.get(_TIMESTAMP_ENV)
    overrides = {"timestamp": timestamp} if timestamp else {}
    cfg = load_config(config_path, cli_args=cli_args, n_gpus=n_gpus, **overrides)
    if transform is not None:
        transform(cfg)
    if cfg.description:
        logger.info("%s: %s", cfg.name, cfg.description)
    if cfg.use_timestamp:
        os.environ[_TIMESTAMP_ENV] = cfg.timestamp
    check_resume_path(cfg.resume)
    if not cfg.data_type or not cfg.system_type:
        raise ConfigError("the config must set data_type and system_type")
    resolve_data_config(cfg)
    plan = plan_trial(cfg, config_path, is_owner=_rank() == 0)
    cfg.trial_dir = plan.trial_dir

    import lightning.pytorch as pl

    from threestudio.utils.noise import silence_unactionable_warnings

    silence_unactionable_warnings(mode)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system)
    # Everything that can fail on user input (images, checkpoints, guidance, values) fails here, before any write.
    datamodule.setup("fit" if mode == "train" else mode)
    system.prepare(mode, datamodule)
    preloaded = _check_before_writing(cfg, mode, system, n_gpus)

    from threestudio.utils.io import confined_writes

    if _rank() != 0:  # DDP workers: rank 0 owns the folder, its lock and its config
        with confined_writes(plan.trial_dir):
            return _fit_or_render(cfg, mode, system, datamodule, None, n_gpus, preloaded, started, stop, callbacks)
    if plan.existing:
        check_trial_links(plan.trial_dir)
    else:
        create_trial_folder(plan.trial_dir)
    stop.trial_dir = plan.trial_dir
    from threestudio.utils.checkpoint_io import remove_stale_temporaries
    from threestudio.utils.trial_lock import trial_lock

    try:
        with confined_writes(plan.trial_dir), trial_lock(plan.trial_dir):
            remove_stale_temporaries(os.path.join(plan.trial_dir, "ckpts"))
            resume_number = _write_trial_config(cfg, plan, mode)
            return _fit_or_render(
                cfg, mode, system, datamodule, resume_number, n_gpus, preloaded, started, stop, callbacks
            )
    except (OSError, UserError) as e:
        failure = _write_failure(e, plan)
        if failure is e:
            raise
        raise failure from e


def _stop_if_signalled(stop: Any) -> None:
    """A loop that ended early because of a signal returns normally in Lightning: stop the run here."""
    if stop.signum is not None:
        raise KeyboardInterrupt


def _test_pass(trainer: Any, system: Any, datamodule: Any, resume: Optional[str], stop: Any) -> None:
    """``trainer.test``; a stop by a signal records how many views were rendered (for the message)."""
    stop.stage = "test"
    try:
        with stop.graceful(trainer):
            trainer.test(system, datamodule=datamodule, ckpt_path=resume)
    finally:
        if stop.signum is not None:
            stop.views_done = trainer.test_loop.batch_progress.current.completed
            stop.views_total = sum(trainer.num_test_batches or [0])


def _fit_or_render(
    cfg: Any,
    mode: str,
    system: Any,
    datamodule: Any,
    resume_number: Optional[int],
    n_gpus: int,
    preloaded: dict,
    started: float,
    stop: Any,
    callbacks: Sequence[Any] = (),
) -> str:
    """Run the Lightning loop of ``mode`` in ``cfg.trial_dir``, then write the run's report; returns the trial."""
    trial_dir, resume = cfg.trial_dir, cfg.resume
    system.set_save_dir(os.path.join(trial_dir, "save"))
    logger.info("trial folder: %s", trial_dir)
    t_kwargs = trainer_kwargs(cfg.trainer, n_gpus)
    trainer = _build_trainer(cfg, mode, trial_dir, resume_number, t_kwargs, preloaded, callbacks)
    if mode == "train":
        stop.stage = "train"
        try:
            with stop.graceful(trainer):
                trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; {trainer.checkpoint_callback.kept_checkpoint()}") from None
        finally:
            stop.saved_step = trainer.checkpoint_callback.saved_step
        _stop_if_signalled(stop)
        _test_pass(trainer, system, datamodule, None, stop)
        if getattr(system.cfg, "export_after_train", False) and trainer.global_rank == 0:
            system.export_mesh()
    elif mode == "validate":
        with stop.graceful(trainer):
            trainer.validate(system, datamodule=datamodule, ckpt_path=resume)
    elif mode == "test":
        _test_pass(trainer, system, datamodule, resume, stop)
    else:
        trainer.predict(system, datamodule=datamodule, ckpt_path=resume, return_predictions=False)
    _stop_if_signalled(stop)
    if mode in ("train", "test") and _rank() == 0:
        from threestudio.utils.report import finish_run

        device = f"{t_kwargs['accelerator']} x{t_kwargs['devices']}"
        logger.info("report: %s", finish_run(trial_dir, mode, time.perf_counter() - started, device))
    return trial_dir
