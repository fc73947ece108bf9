"""The single-image datamodule (threestudio/data/single_image.py)."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import threestudio
from threestudio.data.single_image import SingleImageDataModule
from threestudio.utils.camera import orbit_c2w
from threestudio.utils.errors import ConfigError, UserError

RANDOM_KEYS = {
    "rays_o",
    "rays_d",
    "c2w",
    "canonical_c2w",
    "fov_deg",
    "elevation_deg",
    "azimuth_deg",
    "camera_distance",
    "height",
    "width",
    "light_positions",
}
REFERENCE_KEYS = RANDOM_KEYS | {"rgb", "mask"}
EVAL_KEYS = RANDOM_KEYS | {"index"}

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture
def rgba_path(tmp_path):
    """32×32 RGBA: an opaque red square in the middle; transparent green around it."""
    img = np.zeros((32, 32, 4), np.uint8)
    img[..., :3] = GREEN
    img[8:24, 8:24, :3] = RED
    img[8:24, 8:24, 3] = 255
    path = tmp_path / "object_rgba.png"
    iio.imwrite(path, img)
    return str(path)


@pytest.fixture
def wide_rgb_path(tmp_path):
    """16×48 RGB with red, green and blue thirds from left to right."""
    img = np.zeros((16, 48, 3), np.uint8)
    img[:, :16], img[:, 16:32], img[:, 32:] = RED, GREEN, BLUE
    path = tmp_path / "wide.png"
    iio.imwrite(path, img)
    return str(path)


def _config(image_path: str, **overrides) -> dict:
    cfg = {
        "image_path": image_path,
        "height": [8, 16],
        "width": [8, 16],
        "resolution_milestones": [4],
        "default_elevation_deg": 31.0,
        "default_azimuth_deg": 25.0,
        "default_camera_distance": 1.2,
        "default_fovy_deg": 52.55,
        "random_camera": {
            "height": [6, 10],
            "width": [6, 10],
            "batch_size": [3, 1],
            "resolution_milestones": [4],
            "eval_height": 12,
            "eval_width": 12,
            "n_val_views": 2,
            "n_test_views": 4,
            "elevation_range": [5, 80],
            "camera_distance_range": [0.8, 1.8],
            "progressive_until": 10,
        },
    }
    cfg.update(overrides)
    return cfg


def _datamodule(image_path: str, **overrides) -> SingleImageDataModule:
    dm = SingleImageDataModule(_config(image_path, **overrides))
    dm.setup()
    return dm


def test_registered_under_its_name():
    assert threestudio.find("single-image-datamodule") is SingleImageDataModule


def test_train_batch_keys_shapes_and_reference_camera(rgba_path):
    dm = _datamodule(rgba_path)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == REFERENCE_KEYS | {"random_camera"}
    assert (batch["height"], batch["width"]) == (8, 8)
    assert isinstance(batch["height"], int) and isinstance(batch["width"], int)
    for key in ("rays_o", "rays_d", "rgb"):
        assert batch[key].shape == (1, 8, 8, 3) and batch[key].dtype == torch.float32
    assert batch["mask"].shape == (1, 8, 8, 1) and batch["mask"].dtype == torch.float32
    assert batch["c2w"].shape == (1, 4, 4) and batch["light_positions"].shape == (1, 3)
    for key in ("fov_deg", "elevation_deg", "azimuth_deg", "camera_distance"):
        assert batch[key].shape == (1,)

    expected_c2w = orbit_c2w(torch.tensor([31.0]), torch.tensor([25.0]), torch.tensor([1.2]))
    torch.testing.assert_close(batch["c2w"], expected_c2w)
    torch.testing.assert_close(batch["canonical_c2w"], batch["c2w"])
    assert batch["fov_deg"].item() == pytest.approx(52.55)
    assert batch["elevation_deg"].item() == pytest.approx(31.0)
    assert batch["azimuth_deg"].item() == pytest.approx(25.0)
    assert batch["camera_distance"].item() == pytest.approx(1.2)

    random = batch["random_camera"]
    assert set(random) == RANDOM_KEYS
    assert random["rays_d"].shape == (3, 6, 6, 3) and random["c2w"].shape == (3, 4, 4)
    assert random["light_positions"].shape == (3, 3) and random["fov_deg"].shape == (3,)
    torch.testing.assert_close(random["canonical_c2w"], expected_c2w)
    torch.testing.assert_close(random["fov_deg"], torch.full((3,), 52.55))  # fixed to the input's fov


def test_rgba_mask_from_alpha_and_straight_colour(rgba_path):
    dm = _datamodule(rgba_path, height=16, width=16, resolution_milestones=[])
    batch = dm.train_dataset.make_batch()
    mask, rgb = batch["mask"][0, ..., 0], batch["rgb"][0]
    expected = torch.zeros(16, 16)
    expected[4:12, 4:12] = 1.0
    assert torch.equal(mask, expected)
    # inside the object: pure red, without green bleeding in from the transparent neighbours
    torch.testing.assert_close(rgb[4:12, 4:12], torch.tensor([1.0, 0.0, 0.0]).expand(8, 8, 3), atol=1e-5, rtol=0)
    # fully transparent: white
    torch.testing.assert_close(rgb[0, 0], torch.ones(3))
    assert rgb.min() >= 0 and rgb.max() <= 1
    # the guidance's input is the same image composited on white, at its own size
    cond = dm.conditioning()
    assert cond["images"].shape == (1, 32, 32, 3)
    torch.testing.assert_close(cond["images"][0, 0, 0], torch.ones(3))
    torch.testing.assert_close(cond["images"][0, 16, 16], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(cond["c2w"], batch["canonical_c2w"])
    assert cond["fov_deg"].shape == (1,) and cond["fov_deg"].item() == pytest.approx(52.55)


def test_rgb_image_has_a_full_mask(wide_rgb_path):
    dm = _datamodule(wide_rgb_path)
    batch = dm.train_dataset.make_batch()
    assert torch.equal(batch["mask"], torch.ones(1, 8, 8, 1))


def test_crop_modes(wide_rgb_path):
    colours = ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1])
    red, green, blue, white = (torch.tensor(c, dtype=torch.float32) for c in colours)

    centre = _datamodule(wide_rgb_path, height=8, width=8, resolution_milestones=[])
    img = centre.conditioning()["images"][0]
    assert img.shape == (16, 16, 3)
    torch.testing.assert_close(img, green.expand(16, 16, 3))  # the middle third

    pad = _datamodule(wide_rgb_path, height=12, width=12, resolution_milestones=[], crop_mode="pad")
    img = pad.conditioning()["images"][0]
    assert img.shape == (48, 48, 3)
    torch.testing.assert_close(img[0, 24], white)  # transparent padding, composited on white
    torch.testing.assert_close(img[24, 2], red)
    torch.testing.assert_close(img[24, 45], blue)
    mask = pad.train_dataset.make_batch()["mask"][0, :, :, 0]
    assert torch.equal(mask[:4], torch.zeros(4, 12)) and torch.equal(mask[8:], torch.zeros(4, 12))
    assert torch.equal(mask[4:8], torch.ones(4, 12))

    stretch = _datamodule(wide_rgb_path, height=12, width=12, resolution_milestones=[], crop_mode="stretch")
    img = stretch.conditioning()["images"][0]
    assert img.shape == (48, 48, 3)
    torch.testing.assert_close(img[5, 2], red)
    torch.testing.assert_close(img[40, 24], green)
    torch.testing.assert_close(img[20, 45], blue)
    batch = stretch.train_dataset.make_batch()
    assert torch.equal(batch["mask"], torch.ones(1, 12, 12, 1))
    torch.testing.assert_close(batch["rgb"][0, :, 0], red.expand(12, 3))

    with pytest.raises(ConfigError, match="data.crop_mode"):
        SingleImageDataModule(_config(wide_rgb_path, crop_mode="zoom"))


def test_conditioning_is_capped(rgba_path):
    dm = SingleImageDataModule(_config(rgba_path, conditioning_max_size=20))
    with pytest.raises(RuntimeError, match="setup"):
        dm.conditioning()
    dm.setup("test")
    images = dm.conditioning()["images"]
    assert images.shape == (1, 20, 20, 3) and images.min() >= 0 and images.max() <= 1


def test_stage_switch_and_progressive_cameras_follow_update_step(rgba_path):
    dm = _datamodule(rgba_path)
    dataset = dm.train_dataset
    batch = dataset.make_batch()
    # step 0 with progressive_until=10: random views sit at the reference elevation and azimuth
    torch.testing.assert_close(batch["random_camera"]["elevation_deg"], torch.full((3,), 31.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["random_camera"]["azimuth_deg"], torch.full((3,), 25.0))

    dataset.do_update_step(0, 4)  # the milestone: both the reference view and the random views switch
    batch = dataset.make_batch()
    assert (batch["height"], batch["width"]) == (16, 16) and batch["rgb"].shape == (1, 16, 16, 3)
    assert batch["rays_o"].shape == (1, 16, 16, 3) and batch["mask"].shape == (1, 16, 16, 1)
    random = batch["random_camera"]
    assert random["rays_d"].shape == (1, 10, 10, 3) and (random["height"], random["width"]) == (10, 10)

    dataset.update_step(0, 3)
    assert dataset.make_batch()["rgb"].shape == (1, 8, 8, 3)


def test_reference_rays_and_noise(rgba_path):
    dm = _datamodule(rgba_path, height=9, width=9, resolution_milestones=[], rays_noise_scale=0.0)
    batch = dm.train_dataset.make_batch()
    o, d = batch["rays_o"][0, 4, 4], batch["rays_d"][0, 4, 4]
    assert (o - (o @ d) * d).norm() < 1e-5  # the centre ray passes through the origin
    torch.testing.assert_close(o, batch["c2w"][0, :3, 3])

    noisy = _datamodule(rgba_path, height=[9, 9], width=[9, 9], resolution_milestones=[5], rays_noise_scale=1e-2)
    a, b = noisy.train_dataset.make_batch(), noisy.train_dataset.make_batch()
    torch.testing.assert_close(a["rays_o"], b["rays_o"])  # drawn once per stage, as ZeroNVS
    assert not torch.equal(a["rays_o"], batch["rays_o"]) and (a["rays_o"] - batch["rays_o"]).abs().max() < 0.1
    shift = a["rays_o"] - batch["rays_o"]
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))  # one 3-vector for every ray
    torch.testing.assert_close(a["rays_d"].norm(dim=-1), torch.ones(1, 9, 9))
    noisy.train_dataset.update_step(0, 5)  # the next stage draws its own noise
    c = noisy.train_dataset.make_batch()
    assert not torch.equal(c["rays_o"], a["rays_o"])
    torch.testing.assert_close(noisy.train_dataset.make_batch()["rays_d"], c["rays_d"])


def test_without_random_cameras(rgba_path):
    dm = _datamodule(rgba_path, use_random_camera=False)
    assert set(dm.train_dataset.make_batch()) == REFERENCE_KEYS


def test_val_and_test_orbits(rgba_path):
    dm = _datamodule(rgba_path)
    val = list(dm.val_dataloader())
    test = list(dm.test_dataloader())
    predict = list(dm.predict_dataloader())
    assert len(val) == 2 and len(test) == 4 and len(predict) == 4
    for i, batch in enumerate(test):
        assert set(batch) == EVAL_KEYS
        assert batch["index"].dtype == torch.long and batch["index"].tolist() == [i]
        assert batch["rays_o"].shape == (1, 12, 12, 3) and batch["rays_d"].shape == (1, 12, 12, 3)
        assert (batch["height"], batch["width"]) == (12, 12)
        assert batch["c2w"].shape == (1, 4, 4) and batch["light_positions"].shape == (1, 3)
        # eval_* left unset: the orbit follows the reference view
        assert batch["elevation_deg"].item() == pytest.approx(31.0)
        assert batch["camera_distance"].item() == pytest.approx(1.2)
        assert batch["fov_deg"].item() == pytest.approx(52.55)
    azimuths = [b["azimuth_deg"].item() for b in test]
    assert azimuths == pytest.approx([25.0, 115.0, -155.0, -65.0])
    torch.testing.assert_close(test[0]["c2w"], test[0]["canonical_c2w"])

    eval_cfg = {"eval_batch_size": 2, "n_test_views": 4, "eval_height": 4, "eval_width": 4}
    wide = _datamodule(rgba_path, random_camera=eval_cfg)
    batch = next(iter(wide.test_dataloader()))
    assert batch["rays_d"].shape == (2, 4, 4, 3) and batch["index"].tolist() == [0, 1]


def test_user_errors(tmp_path, rgba_path):
    missing = str(tmp_path / "nope.png")
    not_read = SingleImageDataModule(_config(missing))  # building reads no file; setup does
    with pytest.raises(UserError, match="nope.png"):
        not_read.setup()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.png"):
        SingleImageDataModule(_config(str(broken))).setup()
    for key in ("requires_depth", "requires_normal"):
        with pytest.raises(UserError, match=f"data.{key}"):
            SingleImageDataModule(_config(rgba_path, **{key: True}))
    with pytest.raises(ConfigError, match="view_synthesis"):
        SingleImageDataModule(_config(rgba_path, view_synthesis={"dataset": "DTU"}))
    with pytest.raises(ConfigError, match="n_aux_c2w"):
        SingleImageDataModule(_config(rgba_path, n_aux_c2w=2))
    with pytest.raises(ConfigError, match="random_camera.bogus"):
        SingleImageDataModule(_config(rgba_path, random_camera={"bogus": 1}))
    with pytest.raises(ConfigError, match="resolution_milestones"):
        SingleImageDataModule(_config(rgba_path, resolution_milestones=[]))
    with pytest.raises(ConfigError, match="data.image_path"):
        SingleImageDataModule(_config(""))


def test_lightning_fit_sees_stage_switch_at_the_milestone_step(rgba_path, monkeypatch):
    """Lightning fetches batches ahead; the datamodule builds each batch once, at the step it is used."""
    import lightning.pytorch as pl

    from threestudio.data.single_image import SingleImageIterableDataset

    calls = {"make_batch": 0, "update_step": 0}
    for name in calls:
        original = getattr(SingleImageIterableDataset, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(SingleImageIterableDataset, name, counted)

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []
            self.val_shapes = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.global_step, batch["height"], batch["random_camera"]["rays_d"].shape[0]))
            return (self.weight * batch["rgb"].mean()).sum()

        def validation_step(self, batch, batch_idx):
            self.val_shapes.append(tuple(batch["rays_d"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    from threestudio.utils.noise import silence_unactionable_warnings

    silence_unactionable_warnings("train")  # as the runner does before its Trainer (Lightning's LeafSpec notice)
    dm = SingleImageDataModule(_config(rgba_path))
    model = Recorder()
    trainer = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        val_check_interval=6,
    )
    trainer.fit(model, datamodule=dm)
    assert model.seen == [(s, 8 if s < 4 else 16, 3 if s < 4 else 1) for s in range(6)]
    # one batch built and one step pushed into the dataset per training step, prefetching included
    assert calls == {"make_batch": 6, "update_step": 6}, calls
    assert model.val_shapes and all(shape == (1, 12, 12, 3) for shape in model.val_shapes)
