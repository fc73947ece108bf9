"""ZeroNVS SDS guidance on the tiny checkpoint fixture: loss/gradient identity, timestep schedules (plain and
anisotropic, tensor-valued and equal to the Python schedule), a step that reads nothing back from the device,
VAE gradient checkpointing, configuration errors, and SDS anchoring."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch

import threestudio
from threestudio.utils.camera import orbit_c2w, rotation_angle_deg
from threestudio.utils.errors import ConfigError, UserError
from threestudio.utils.schedule import C, C_tensor

INPUT_ELEVATION, INPUT_AZIMUTH, INPUT_DISTANCE, FOV = 20.0, 30.0, 1.5, 40.0


def make_guidance(tiny_dir, **overrides):
    cfg = {
        "pretrained_model_name_or_path": str(tiny_dir / "model.ckpt"),
        "pretrained_config": str(tiny_dir / "config.yaml"),
        "precomputed_scale": 0.7,
        "guidance_scale": 5.0,
    }
    cfg.update(overrides)
    guidance = threestudio.find("zeronvs-guidance")(cfg)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 40, 40, 3, generator=generator)
    guidance.set_conditions(image, input_c2w(), torch.tensor([FOV]))
    return guidance.to("cpu")


def input_c2w():
    return orbit_c2w(torch.tensor([INPUT_ELEVATION]), torch.tensor([INPUT_AZIMUTH]), torch.tensor([INPUT_DISTANCE]))


def views(relative_azimuths, elevation=10.0, distance=1.2):
    """A batch of target views at azimuths relative to the input view."""
    azimuth = torch.tensor(relative_azimuths, dtype=torch.float32)
    n = azimuth.shape[0]
    return {
        "c2w": orbit_c2w(torch.full((n,), elevation), azimuth + INPUT_AZIMUTH, torch.full((n,), distance)),
        "fov_deg": torch.full((n,), FOV),
        "azimuth_deg": azimuth,
        "elevation_deg": torch.full((n,), elevation),
        "camera_distance": torch.full((n,), distance),
    }


class Recorder:
    """Wraps a guidance method and keeps its arguments and result."""

    def __init__(self, guidance, name):
        self.fn = getattr(guidance, name)
        self.calls = []
        setattr(guidance, name, self)

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def test_sds_loss_is_finite_and_reaches_the_render(zeronvs_tiny_dir):
    guidance = make_guidance(zeronvs_tiny_dir)
    guidance.update_step(0, 0)
    rgb = torch.rand(2, 24, 24, 3, requires_grad=True)
    out = guidance(rgb, views([45.0, -120.0]))
    assert out["loss_sds"].dim() == 0 and torch.isfinite(out["loss_sds"])
    assert out["loss_sds"] > 0 and torch.isfinite(out["grad_norm"]) and out["grad_norm"] > 0
    assert 20 <= out["min_step"] <= out["t_mean"] <= out["max_step"] <= 980
    assert out["aux_fraction"] == 0.0
    for key, value in out.items():  # the system logs every value: 0-dim tensors, never host numbers
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
    assert out["min_step"].dtype == out["max_step"].dtype == torch.long
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in guidance.model.parameters())


@pytest.mark.parametrize("grad_clip", [None, 0.002])
def test_loss_gradient_equals_sds_gradient(zeronvs_tiny_dir, grad_clip):
    guidance = make_guidance(zeronvs_tiny_dir, grad_clip=grad_clip, guidance_scale=50.0)
    guidance.update_step(0, 0)
    encode, sds_grad = Recorder(guidance, "encode_rgb"), Recorder(guidance, "sds_grad")
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    out = guidance(rgb, views([60.0, 170.0]))
    latents = encode.calls[0][2]
    (lat_in, t, noise, c_crossattn, c_concat, scale), _, grad = sds_grad.calls[0]
    assert torch.equal(lat_in, latents.detach())

    # ∂loss/∂latents = grad / B
    (latent_grad,) = torch.autograd.grad(out["loss_sds"], latents)
    torch.testing.assert_close(latent_grad * 2, grad)
    assert torch.isclose(out["grad_norm"], grad.norm())

    # grad = w(t)(ε̂ − ε), recomputed here: CFG on [uncond; cond] with zeros for both unconditional inputs
    alpha_bar = guidance.model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
    model = guidance.model
    with torch.no_grad():
        eps_c = model.predict_eps(noisy, t, c_crossattn, c_concat)
        eps_u = model.predict_eps(noisy, t, torch.zeros_like(c_crossattn), torch.zeros_like(c_concat))
    expected = (1 - alpha_bar) * (eps_u + 50.0 * (eps_c - eps_u) - noise)
    if grad_clip is None:
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    else:
        assert grad.abs().max() <= grad_clip + 1e-8
        assert expected.abs().max() > grad_clip  # the clamp is active
        torch.testing.assert_close(grad, expected.clamp(-grad_clip, grad_clip), rtol=1e-4, atol=1e-5)

    # the conditioning is cc_projection of the input view's CLIP embedding and the relative camera
    import zeronvs_diffusion

    batch = views([60.0, 170.0])
    camera = zeronvs_diffusion.camera_embedding(input_c2w().expand(2, -1, -1), batch["c2w"], batch["fov_deg"], 0.7)
    bank = guidance.conditioning_bank()
    torch.testing.assert_close(c_crossattn, model.project(bank.clip_raw[[0, 0]], camera))
    torch.testing.assert_close(c_concat, bank.c_concat[[0, 0]])


def test_grad_clip_is_schedulable(zeronvs_tiny_dir):
    guidance = make_guidance(zeronvs_tiny_dir, grad_clip=[0, 0.5, 2.5, 100])
    guidance.update_step(0, 0)
    assert guidance.grad_clip_val == pytest.approx(0.5)
    guidance.update_step(0, 50)
    assert guidance.grad_clip_val == pytest.approx(1.5)


def test_timesteps_stay_in_the_scheduled_bounds(zeronvs_tiny_dir):
    guidance = make_guidance(
        zeronvs_tiny_dir, min_step_percent=[0, 0.5, 0.02, 100], max_step_percent=[0, 0.98, 0.3, 100]
    )
    delta = torch.zeros(64)
    guidance.update_step(0, 0)
    lo, hi = guidance.timestep_bounds(delta)
    assert lo.unique().tolist() == [500] and hi.unique().tolist() == [980]
    t = guidance.sample_timesteps(lo, hi)
    assert t.dtype == torch.long and (t >= 500).all() and (t <= 980).all() and t.unique().numel() > 10

    guidance.update_step(0, 100)
    lo, hi = guidance.timestep_bounds(delta)
    assert lo.unique().tolist() == [20] and hi.unique().tolist() == [300]
    t = guidance.sample_timesteps(lo, hi)
    assert (t >= 20).all() and (t <= 300).all()
    out = guidance(torch.rand(2, 32, 32, 3), views([10.0, 180.0]))
    assert (out["min_step"], out["max_step"]) == (20, 300)
    assert 20 <= out["t_mean"] <= 300


def test_anisotropic_schedule_delays_views_far_from_the_input(zeronvs_tiny_dir):
    guidance = make_guidance(
        zeronvs_tiny_dir,
        use_anisotropic_schedule=True,
        anisotropic_offset=1000,
        min_step_percent=0.02,
        max_step_percent=[1000, 0.98, 0.02, 2000],
    )
    guidance.update_step(0, 2000)
    relative = [0.0, 90.0, -90.0, 180.0, 270.0]
    delta = guidance.input_azimuth_distance(views(relative)["c2w"])
    torch.testing.assert_close(delta, torch.tensor([0.0, 90.0, 90.0, 180.0, 90.0]), atol=1e-3, rtol=0)

    lo, hi = guidance.timestep_bounds(torch.tensor([0.0, 90.0, 180.0]))
    # effective steps 2000, 1500, 1000 → max percent 0.02, 0.50, 0.98
    assert hi.tolist() == [20, 500, 980]
    assert lo.tolist() == [20, 20, 20]
    # the same bounds without the anisotropic schedule: all at step 2000
    guidance.cfg.use_anisotropic_schedule = False
    assert guidance.timestep_bounds(torch.tensor([0.0, 90.0, 180.0]))[1].tolist() == [20, 20, 20]


def reference_timestep_bounds(cfg, t_count, delta_azimuth_deg, step):
    """The bounds as the guidance computed them on the host before: a Python loop over C, sample by sample."""
    if cfg.use_anisotropic_schedule:
        diff = torch.remainder(delta_azimuth_deg.float(), 360.0)
        frac = torch.minimum(diff, 360.0 - diff) / 180.0
        steps = (step - cfg.anisotropic_offset * frac).clamp_min(0).floor().long().tolist()
    else:
        steps = [step] * delta_azimuth_deg.shape[0]
    lows, highs = [], []
    for s in steps:
        lo = min(max(int(t_count * C(cfg.min_step_percent, 0, s)), 0), t_count - 1)
        hi = int(t_count * C(cfg.max_step_percent, 0, s))
        lows.append(lo)
        highs.append(min(max(hi, lo), t_count - 1))
    return lows, highs


SCHEDULES = [  # (min_step_percent, max_step_percent): ZeroNVS-like, ramps off 0, clamping, max < min, degenerate
    (0.02, [0, 0.98, 0.02, 2000]),
    ([100, 0.5, 0.02, 1100], [1000, 0.98, 0.3, 3000]),
    ([0, 0.0, 1.0, 3], [0.1, 0.7, 7]),
    (-0.1, 1.2),
    (0.6, [0, 0.9, 0.3, 1000]),
    ([500, 0.9, 0.1, 500], [700, 0.3, 0.95, 400]),
]


def test_tensor_schedule_equals_the_python_schedule():
    steps = torch.tensor([0, 1, 2, 3, 7, 99, 100, 101, 333, 499, 500, 501, 1099, 1100, 1101, 2000, 5000])
    for value in [0.3, 2, [0, 0.5, 0.02, 100], [0.98, 0.1, 7], [500, 0.9, 0.1, 500], [700, 0.3, 0.95, 400]]:
        got = C_tensor(value, steps)
        assert got.dtype == torch.float64 and got.shape == steps.shape
        assert got.tolist() == [C(value, 0, s) for s in steps.tolist()], value  # exactly, not approximately
    assert C_tensor([0, 1.0, 0.0, 10], torch.zeros(2, 3, device="meta")).device.type == "meta"
    with pytest.raises(ConfigError):
        C_tensor([1, 2], steps)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_timestep_bounds_equal_the_per_sample_python_loop(zeronvs_tiny_dir, anisotropic):
    guidance = make_guidance(zeronvs_tiny_dir, use_anisotropic_schedule=anisotropic,
                             anisotropic_offset=1000 if anisotropic else 0)
    cfg, t_count = guidance.cfg, guidance.num_train_timesteps
    generator = torch.Generator().manual_seed(0)
    delta = torch.cat([torch.linspace(-400.0, 400.0, 33), torch.rand(31, generator=generator) * 720 - 360])
    for offset in (1000, 333.3):
        cfg.anisotropic_offset = offset
        for cfg.min_step_percent, cfg.max_step_percent in SCHEDULES:
            for step in [0, 1, 2, 3, 50, 99, 333, 500, 999, 1000, 1100, 1500, 2000, 2001, 3000, 4000]:
                lo, hi = guidance.timestep_bounds(delta, step)
                assert lo.dtype == hi.dtype == torch.long
                assert (lo.tolist(), hi.tolist()) == reference_timestep_bounds(cfg, t_count, delta, step)
                assert (0 <= lo).all() and (lo <= hi).all() and (hi <= t_count - 1).all()
    # the bounds stay on the input's device (here the data-less meta device: nothing is read back)
    lo, hi = guidance.timestep_bounds(delta.to("meta"), 1000)
    assert lo.device.type == hi.device.type == "meta"


@contextlib.contextmanager
def refuse_host_device_traffic(monkeypatch):
    """Inside: host→device copies and torch.linalg.inv (it checks its result on the host) raise.

    Used with the meta device (tensors without data), where every read of a value on the host (.item(), bool(),
    .cpu(), .tolist(), int(), a Python loop over a tensor) raises as well: together, what on CUDA would wait
    for the GPU.
    """
    real_to, real_copy = torch.Tensor.to, torch.Tensor.copy_

    def checked_to(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type != "cpu":
            raise AssertionError(f"host→device copy of a {tuple(self.shape)} tensor inside the SDS step")
        return out

    def checked_copy(self, src, *args, **kwargs):
        if src.device.type == "cpu" and self.device.type != "cpu":
            raise AssertionError(f"host→device copy_ of a {tuple(src.shape)} tensor inside the SDS step")
        return real_copy(self, src, *args, **kwargs)

    def checked_factory(factory):
        def make(data, *args, **kwargs):
            device = kwargs.get("device", args[1] if len(args) > 1 else None)
            on_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
            if device is not None and torch.device(device).type != "cpu" and on_host:
                raise AssertionError(f"{factory.__name__}(host data, device={device}) inside the SDS step")
            return factory(data, *args, **kwargs)

        return make

    def linalg_inv(*args, **kwargs):
        raise AssertionError("torch.linalg.inv inside the SDS step (use linalg.inv_ex)")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "to", checked_to)
        patch.setattr(torch.Tensor, "copy_", checked_copy)
        patch.setattr(torch, "tensor", checked_factory(torch.tensor))
        patch.setattr(torch, "as_tensor", checked_factory(torch.as_tensor))
        patch.setattr(torch.linalg, "inv", linalg_inv)
        yield


@pytest.mark.parametrize("vae_gradient_checkpointing", [False, True])
def test_sds_step_reads_nothing_back_from_the_device(zeronvs_tiny_dir, monkeypatch, vae_gradient_checkpointing):
    guidance = make_guidance(
        zeronvs_tiny_dir,
        n_aux_c2w=1,
        anchor_ddim_steps=1,
        p_use_aux_cameras=0.5,
        guidance_scale_aux=2.0,
        use_anisotropic_schedule=True,
        anisotropic_offset=500,
        max_step_percent=[0, 0.98, 0.5, 100],
        grad_clip=0.1,
        vae_gradient_checkpointing=vae_gradient_checkpointing,
    )
    guidance.update_step(0, 50)
    guidance.conditioning_bank()  # the input view's embeddings and the anchors: once, before training
    guidance.to("meta")
    batch = {key: value.to("meta") for key, value in views([30.0, 100.0]).items()}
    batch["cond_index"] = torch.zeros(2, dtype=torch.long, device="meta")
    rgb = torch.rand(2, 32, 32, 3, device="meta", requires_grad=True)
    with refuse_host_device_traffic(monkeypatch):
        out = guidance._sds(rgb, batch)  # __call__ adds only torch.autocast(enabled=False), which meta lacks
        out["loss_sds"].backward()
    assert sorted(out) == ["aux_fraction", "grad_norm", "loss_sds", "max_step", "min_step", "t_mean"]
    assert all(value.device.type == "meta" and value.dim() == 0 for value in out.values())
    assert rgb.grad.shape == rgb.shape


def test_the_readback_check_catches_a_host_read(zeronvs_tiny_dir, monkeypatch):
    """The check above can fail: a step that reads t back (as the guidance once did) raises."""
    guidance = make_guidance(zeronvs_tiny_dir)
    guidance.conditioning_bank()
    guidance.to("meta")
    batch = {key: value.to("meta") for key, value in views([30.0]).items()}
    rgb = torch.rand(1, 32, 32, 3, device="meta", requires_grad=True)
    monkeypatch.setattr(guidance, "sample_timesteps", lambda lo, hi: torch.tensor([int(lo.max())], device="meta"))
    with refuse_host_device_traffic(monkeypatch), pytest.raises(RuntimeError, match="item.*meta tensors"):
        guidance._sds(rgb, batch)
    with refuse_host_device_traffic(monkeypatch), pytest.raises(AssertionError, match="host→device"):
        torch.zeros(2).to("meta")


def saved_activation_bytes(fn):
    """Bytes of the tensors autograd keeps for the backward while ``fn()`` runs."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


def test_vae_gradient_checkpointing_keeps_the_gradient_and_saves_less(zeronvs_tiny_dir):
    assert not make_guidance(zeronvs_tiny_dir).model.vae.encoder.gradient_checkpointing  # off by default
    guidance = make_guidance(zeronvs_tiny_dir, vae_gradient_checkpointing=True)
    guidance.update_step(0, 0)
    rgb, batch = torch.rand(2, 32, 32, 3), views([45.0, -120.0])

    def sds_gradient_and_saved_bytes():
        x = rgb.clone().requires_grad_(True)
        torch.manual_seed(3)  # the same t, noise and posterior sample in both runs
        guidance(x, batch)["loss_sds"].backward()
        return x.grad, saved_activation_bytes(lambda: guidance.encode_rgb(rgb.clone().requires_grad_(True)))

    grad_checkpointed, bytes_checkpointed = sds_gradient_and_saved_bytes()
    guidance.model.vae.disable_gradient_checkpointing()
    grad_plain, bytes_plain = sds_gradient_and_saved_bytes()
    assert grad_plain.abs().sum() > 0
    torch.testing.assert_close(grad_checkpointed, grad_plain, rtol=1e-6, atol=1e-9)
    assert bytes_checkpointed < 0.3 * bytes_plain  # only the blocks' inputs are kept, not their activations


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler on PATH",
)
@pytest.mark.slow  # torch.compile builds C++ kernels (~20 s)
def test_compiled_unet_gives_the_eager_sds_gradient(zeronvs_tiny_dir):
    """compile_unet (torch.compile, inductor on the CPU: about half a minute to compile) keeps the SDS gradient."""
    rgb, batch = torch.rand(2, 32, 32, 3), views([45.0, -120.0])

    def sds_gradient(guidance):
        guidance.update_step(0, 0)
        x = rgb.clone().requires_grad_(True)
        torch.manual_seed(3)
        guidance(x, batch)["loss_sds"].backward()
        return x.grad

    eager = sds_gradient(make_guidance(zeronvs_tiny_dir))
    compiled_guidance = make_guidance(zeronvs_tiny_dir, compile_unet="default")
    assert compiled_guidance.model.unet._compiled_call_impl is not None  # the UNet really goes through torch.compile
    assert eager.abs().sum() > 0
    torch.testing.assert_close(sds_gradient(compiled_guidance), eager, rtol=1e-4, atol=1e-6)


def test_unknown_compile_mode_is_a_config_error(zeronvs_tiny_dir):
    with pytest.raises(ConfigError, match="compile_unet.*reduce-overhead"):
        make_guidance(zeronvs_tiny_dir, compile_unet="fast")


def test_precomputed_scale_null_is_a_user_error(zeronvs_tiny_dir):
    with pytest.raises(UserError, match="precomputed_scale is null.*0.7"):
        make_guidance(zeronvs_tiny_dir, precomputed_scale=None)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    cfg = {"pretrained_model_name_or_path": str(tmp_path / "zeronvs.ckpt"), "precomputed_scale": 0.7}
    with pytest.raises(UserError, match="zeronvs.ckpt"):
        threestudio.find("zeronvs-guidance")(cfg)


@pytest.mark.parametrize("key", ["vram_O", "cond_image_path", "depth_threshold_for_anchor_guidance", "no_such_key"])
def test_unused_or_unknown_keys_are_config_errors(tmp_path, key):
    cfg = {"pretrained_model_name_or_path": str(tmp_path / "x.ckpt"), "precomputed_scale": 0.7, key: 1}
    with pytest.raises(ConfigError, match=key):
        threestudio.find("zeronvs-guidance")(cfg)


def test_weights_dtype_resolution():
    from zeronvs_diffusion.model_config import resolve_weights_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_weights_dtype("auto", True, cpu) == torch.float32
    assert resolve_weights_dtype("bf16", False, cpu) == torch.float32
    assert resolve_weights_dtype("fp16", False, cuda) == torch.float16
    assert resolve_weights_dtype("auto", False, cuda) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        resolve_weights_dtype("half", False, cpu)


def test_anchor_poses_split_the_input_orbit():
    from threestudio.models.guidance.zeronvs_guidance import anchor_poses

    c2w, elevation, azimuth, distance = anchor_poses(input_c2w()[0], 3)
    torch.testing.assert_close(azimuth, torch.tensor([120.0, -150.0, -60.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(elevation, torch.full((3,), INPUT_ELEVATION), atol=1e-3, rtol=0)
    torch.testing.assert_close(c2w[:, :3, 3].norm(dim=-1), torch.full((3,), INPUT_DISTANCE))
    forward = -c2w[:, :3, 2]  # OpenGL cameras look down −z: towards the origin
    torch.testing.assert_close(forward, -c2w[:, :3, 3] / INPUT_DISTANCE, atol=1e-5, rtol=0)


def test_sds_anchoring(zeronvs_tiny_dir, tmp_path):
    import zeronvs_diffusion

    guidance = make_guidance(
        zeronvs_tiny_dir, n_aux_c2w=2, anchor_ddim_steps=2, p_use_aux_cameras=[0, 1.0, 0.0, 10], guidance_scale_aux=2.0
    )
    sampler = Recorder(zeronvs_diffusion, "sample_views")  # counts the DDIM calls
    try:
        sds_grad = Recorder(guidance, "sds_grad")
        guidance.update_step(0, 0)
        # anchors at input azimuth + 120° and + 240°; targets near anchor 0, anchor 1 and the input view
        batch = views([115.0, 245.0, 5.0])
        out = guidance(torch.rand(3, 32, 32, 3), batch)
        guidance(torch.rand(3, 32, 32, 3), batch)
    finally:
        zeronvs_diffusion.sample_views = sampler.fn
    assert len(sampler.calls) == 1  # generated once, on the first call
    assert sampler.calls[0][1]["steps"] == 2

    # the guidance keeps the anchors in memory and writes nothing; the system writes them (base.write_anchor_views)
    assert guidance.anchors is not None and guidance.anchors.images.shape == (2, 32, 32, 3)
    import threestudio.models.guidance.zeronvs_guidance as guidance_module

    assert not {"os", "save_image", "write_json_atomic"} & set(vars(guidance_module))  # no file output in a loss
    from threestudio.systems.base import write_anchor_views

    save_dir = tmp_path / "save" / "anchors"
    save_dir.mkdir(parents=True)
    write_anchor_views(str(save_dir), guidance.anchors)
    files = sorted(p.name for p in save_dir.iterdir())
    assert files == ["anchor_00.png", "anchor_01.png", "anchors.json"]
    record = json.loads((save_dir / "anchors.json").read_text())
    assert list(record) == ["convention", "input_view", "ddim_steps", "ddim_eta", "guidance_scale", "seed",
                            "precomputed_scale", "anchors"]
    assert [round(a["azimuth_deg"]) for a in record["anchors"]] == [150, -90]
    assert record["anchors"][0]["file"] == "anchor_00.png" and len(record["anchors"][1]["c2w"]) == 4

    bank = guidance.conditioning_bank()
    assert bank.is_anchor.tolist() == [False, True, True]
    assert guidance.anchor_images.shape == (2, 32, 32, 3)
    # nearest-view conditioning with p_use_aux_cameras = 1 at step 0
    assert guidance.select_conditioning(batch["c2w"]).tolist() == [1, 2, 0]
    assert out["aux_fraction"] == pytest.approx(2 / 3)
    (_, _, _, c_crossattn, c_concat, scale), _, _ = sds_grad.calls[0]
    assert scale.tolist() == [2.0, 2.0, 5.0]
    torch.testing.assert_close(c_concat, bank.c_concat[[1, 2, 0]])
    camera = zeronvs_diffusion.camera_embedding(bank.c2w[[1, 2, 0]], batch["c2w"], batch["fov_deg"], 0.7)
    torch.testing.assert_close(c_crossattn, guidance.model.project(bank.clip_raw[[1, 2, 0]], camera))
    # the anchors' angles to their targets are the smallest in the bank
    angles = rotation_angle_deg(bank.c2w[None, :, :3, :3], batch["c2w"][:, None, :3, :3])
    assert angles.argmin(dim=1).tolist() == [1, 2, 0]

    # the probability is schedulable: at step 10 it is 0 and every sample uses its input view
    guidance.update_step(0, 10)
    assert guidance.select_conditioning(batch["c2w"]).tolist() == [0, 0, 0]
    # ... while guidance_scale_aux still follows the nearest bank view, as ZeroNVS
    out = guidance(torch.rand(3, 32, 32, 3), batch)
    (_, _, _, _, c_concat, scale), _, _ = sds_grad.calls[-1]
    assert scale.tolist() == [2.0, 2.0, 5.0] and out["aux_fraction"] == 0
    torch.testing.assert_close(c_concat, bank.c_concat[[0, 0, 0]])


def test_several_input_views_follow_cond_index(zeronvs_tiny_dir):
    guidance = make_guidance(zeronvs_tiny_dir)
    second_c2w = orbit_c2w(torch.tensor([0.0]), torch.tensor([INPUT_AZIMUTH + 90.0]), torch.tensor([2.0]))
    guidance.set_conditions(torch.rand(2, 32, 32, 3), torch.cat([input_c2w(), second_c2w]), torch.tensor([FOV, 50.0]))
    guidance.update_step(0, 0)
    sds_grad = Recorder(guidance, "sds_grad")
    batch = views([90.0, 90.0])
    batch["cond_index"] = torch.tensor([1, 0])
    guidance(torch.rand(2, 32, 32, 3), batch)
    (_, _, _, _, c_concat, _), _, _ = sds_grad.calls[0]
    bank = guidance.conditioning_bank()
    assert len(bank) == 2 and not torch.allclose(bank.c_concat[0], bank.c_concat[1])
    torch.testing.assert_close(c_concat, bank.c_concat[[1, 0]])
    # azimuth distances are measured from each sample's own input view
    torch.testing.assert_close(
        guidance.input_azimuth_distance(batch["c2w"], batch["cond_index"]), torch.tensor([0.0, 90.0]), atol=1e-3, rtol=0
    )
    batch["cond_index"] = torch.tensor([2, 0])
    with pytest.raises(ValueError, match="cond_index"):
        guidance(torch.rand(2, 32, 32, 3), batch)


@pytest.mark.parametrize("rule", ["nearest", "first"])
def test_input_selection_rule_without_cond_index(zeronvs_tiny_dir, rule):
    """Without cond_index each sample is conditioned on the input nearest by rotation angle (ZeroNVS*), or with
    input_selection=first on input 0; anisotropic |Δazimuth| is measured from that input; anchors come after the
    inputs in the bank."""
    guidance = make_guidance(zeronvs_tiny_dir, input_selection=rule)
    inputs = orbit_c2w(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 120.0, -120.0]) + INPUT_AZIMUTH,
                       torch.tensor([2.0, 2.0, 2.0]))
    guidance.set_conditions(torch.rand(3, 32, 32, 3), inputs, torch.full((3,), FOV))
    guidance.update_step(0, 0)
    sds_grad = Recorder(guidance, "sds_grad")
    batch = views([10.0, 115.0, -100.0, 170.0])  # nearest inputs 0, 1, 2, and 1 (170° is 50° from 120°)
    guidance(torch.rand(4, 32, 32, 3), batch)
    expected = [0, 1, 2, 1] if rule == "nearest" else [0, 0, 0, 0]
    (_, _, _, _, c_concat, _), _, _ = sds_grad.calls[0]
    torch.testing.assert_close(c_concat, guidance.conditioning_bank().c_concat[expected])
    assert guidance.select_conditioning(batch["c2w"]).tolist() == expected
    distance = guidance.input_azimuth_distance(batch["c2w"])
    want = [10.0, 5.0, 20.0, 50.0] if rule == "nearest" else [10.0, 115.0, 100.0, 170.0]
    torch.testing.assert_close(distance, torch.tensor(want), atol=1e-3, rtol=0)
    # an explicit cond_index still wins over the rule
    batch["cond_index"] = torch.tensor([2, 2, 2, 2])
    assert guidance.select_conditioning(batch["c2w"], batch["cond_index"]).tolist() == [2, 2, 2, 2]


@pytest.mark.slow  # anchor sampling
def test_anchoring_composes_with_several_inputs(zeronvs_tiny_dir):
    """The bank holds the inputs, then the anchors; without the anchor draw a sample uses its nearest input."""
    guidance = make_guidance(zeronvs_tiny_dir, n_aux_c2w=2, anchor_ddim_steps=1, p_use_aux_cameras=[0, 1.0, 0.0, 10])
    inputs = orbit_c2w(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 180.0]) + INPUT_AZIMUTH, torch.tensor([2.0, 2.0]))
    guidance.set_conditions(torch.rand(2, 32, 32, 3), inputs, torch.full((2,), FOV))
    guidance.update_step(0, 0)
    bank = guidance.conditioning_bank()
    assert bank.is_anchor.tolist() == [False, False, True, True]
    torch.testing.assert_close(bank.c2w[:2], inputs)
    batch = views([170.0, 10.0])
    assert guidance.select_conditioning(batch["c2w"]).max() <= 3  # p = 1: the nearest bank view, anchors included
    guidance.update_step(0, 10)  # p = 0: the nearest input
    assert guidance.select_conditioning(batch["c2w"]).tolist() == [1, 0]


def test_input_selection_is_checked(zeronvs_tiny_dir):
    with pytest.raises(ConfigError, match="input_selection"):
        make_guidance(zeronvs_tiny_dir, input_selection="closest")


@pytest.mark.slow  # a system through the runner's steps with anchor sampling
def test_system_writes_the_anchor_views_once(tmp_path):
    """The system, not the guidance, writes save/anchors/ (names and record as before), once per generation."""
    from system_steps import build, training_batch, training_losses

    tiny = ["data.height=16", "data.width=16", "data.random_camera.height=16", "data.random_camera.width=16",
            "data.random_camera.batch_size=1", "system.guidance.n_aux_c2w=2", "system.guidance.anchor_ddim_steps=1"]
    _, datamodule, system = build("smoke.yaml", tiny)
    system.set_save_dir(str(tmp_path / "save"))
    batch = training_batch(datamodule)
    training_losses(system, batch)
    folder = tmp_path / "save" / "anchors"
    assert sorted(p.name for p in folder.iterdir()) == ["anchor_00.png", "anchor_01.png", "anchors.json"]
    record = json.loads((folder / "anchors.json").read_text())
    assert [a["file"] for a in record["anchors"]] == ["anchor_00.png", "anchor_01.png"]
    assert record["ddim_steps"] == 1 and record["precomputed_scale"] == 0.7
    (folder / "anchors.json").unlink()
    training_losses(system, batch, step=1)
    assert not (folder / "anchors.json").exists()  # the anchors are generated, and written, once
