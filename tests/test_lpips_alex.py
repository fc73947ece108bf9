"""LPIPS (AlexNet, v0.1) in plain PyTorch (threestudio/utils/lpips_alex.py).

The reference values in tests/fixtures/lpips_alex_reference.json come from the ``lpips`` package (with torchvision)
on the same seeded random weights and images, computed by ``scripts/check_lpips_equality.py`` in a side environment
(docs/EVALUATION.md); here, without torchvision, the pure implementation must reproduce them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle

import pytest
import torch
from conftest import ROOT

from threestudio.utils import lpips_alex

REFERENCE = ROOT / "tests" / "fixtures" / "lpips_alex_reference.json"


def _check_script():
    spec = importlib.util.spec_from_file_location("check_lpips_equality", ROOT / "scripts" / "check_lpips_equality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights():
    return lpips_alex.weights_from_state_dicts(*lpips_alex.random_state_dicts(0))


def test_matches_the_lpips_package_reference_values():
    reference = json.loads(REFERENCE.read_text())
    check = _check_script()
    assert reference["weight_seed"] == check.WEIGHT_SEED and len(reference["pairs"]) == 10
    weights = lpips_alex.weights_from_state_dicts(*lpips_alex.random_state_dicts(reference["weight_seed"]))
    sizes = set()
    for pair in reference["pairs"]:
        a, b = check.image_pair(pair["seed"], pair["height"], pair["width"], pair["noise"], pair["normalize"])
        with torch.no_grad():
            got = float(lpips_alex.lpips_alex(a, b, weights, normalize=pair["normalize"])[0])
        assert got == pytest.approx(pair["lpips"], abs=1e-6), pair
        sizes.add((pair["height"], pair["width"]))
    assert (256, 256) in sizes and any(h != w for h, w in sizes)


def test_identity_is_zero_and_distance_is_symmetric(weights):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 40, 56, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(lpips_alex.lpips_alex(a, a.clone(), weights), torch.zeros(2), atol=1e-7)
        d_ab, d_ba = lpips_alex.lpips_alex(a, b, weights), lpips_alex.lpips_alex(b, a, weights)
    assert torch.all(d_ab > 0) and torch.allclose(d_ab, d_ba, rtol=1e-6, atol=1e-8)


def test_rejects_images_alexnet_cannot_take(weights):
    with pytest.raises(ValueError, match="at least 31"):
        lpips_alex.lpips_alex(torch.zeros(1, 3, 30, 64), torch.zeros(1, 3, 30, 64), weights)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        lpips_alex.lpips_alex(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 33), weights)


def test_explicit_folder_is_used_and_never_bypassed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub_home"))
    monkeypatch.setattr(lpips_alex, "_download", lambda *a: pytest.fail("an explicit folder must not download"))
    with pytest.raises(lpips_alex.LpipsUnavailable, match="alexnet-owt-7be5be79.pth and alex.pth not found in"):
        lpips_alex.find_weight_files(str(tmp_path / "empty"))
    lpips_alex.write_random_weights(str(tmp_path / "w"), seed=3)
    monkeypatch.setenv(lpips_alex.ENV_DIR, str(tmp_path / "w"))
    paths = lpips_alex.find_weight_files()
    assert paths == (str(tmp_path / "w" / lpips_alex.ALEXNET_FILE), str(tmp_path / "w" / lpips_alex.LINEAR_FILE))
    loaded = lpips_alex.load_weights(*paths)
    expected = lpips_alex.weights_from_state_dicts(*lpips_alex.random_state_dicts(3))
    assert torch.equal(loaded.convs[2][0], expected.convs[2][0]) and torch.equal(loaded.lins[4], expected.lins[4])


def test_hub_cache_then_one_download_with_a_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(lpips_alex.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(lpips_alex, "_installed_lpips_linear", lambda: None)
    src_alex, src_lin = lpips_alex.write_random_weights(str(tmp_path / "src"), seed=4)
    fetched = []

    def fake_download_url_to_file(url, dst, hash_prefix=None, progress=True):  # stands in for the network
        fetched.append((url, hash_prefix))
        with open(src_alex if url == lpips_alex.ALEXNET_URL else src_lin, "rb") as f, open(dst, "wb") as out:
            out.write(f.read())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download_url_to_file)
    with pytest.raises(lpips_alex.LpipsUnavailable, match="downloads are off"):
        lpips_alex.find_weight_files(download=False)
    with caplog.at_level("WARNING"):
        alexnet, linear = lpips_alex.find_weight_files()
    hub = tmp_path / "home" / "hub" / "checkpoints"
    assert (alexnet, linear) == (str(hub / lpips_alex.ALEXNET_FILE), str(hub / lpips_alex.HUB_LINEAR_FILE))
    assert fetched == [(lpips_alex.ALEXNET_URL, "7be5be79"), (lpips_alex.LINEAR_URL, None)]
    assert sum("downloading" in r.getMessage() for r in caplog.records) == 2
    lpips_alex.find_weight_files()  # now cached: no second download
    assert len(fetched) == 2
    lpips_alex.load_weights(alexnet, linear)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv(lpips_alex.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(lpips_alex, "_installed_lpips_linear", lambda: None)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(lpips_alex.LpipsUnavailable, match="network is unreachable.*--lpips-weights DIR"):
        lpips_alex.find_weight_files()


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_weight_files_are_read_without_running_code(tmp_path):
    alexnet, linear = lpips_alex.write_random_weights(str(tmp_path), seed=5)
    sd = torch.load(linear, weights_only=True)
    sd["payload"] = _RunsCode()
    torch.save(sd, linear)
    with pytest.raises(lpips_alex.LpipsUnavailable, match="refusing to load"):
        lpips_alex.load_weights(alexnet, linear)
    with open(linear, "wb") as f:
        pickle.dump({"not": "torch"}, f)
        f.write(b"garbage")
    with pytest.raises(lpips_alex.LpipsUnavailable, match="cannot read"):
        lpips_alex.load_weights(alexnet, linear)


def test_wrong_files_are_named(tmp_path):
    alexnet, linear = lpips_alex.write_random_weights(str(tmp_path), seed=6)
    with pytest.raises(lpips_alex.LpipsUnavailable, match="no tensor 'lin0.model.1.weight'.*alex.pth"):
        lpips_alex.load_weights(alexnet, alexnet)  # the AlexNet file given as the linear layers
    sd = torch.load(alexnet, weights_only=True)
    sd["features.3.weight"] = sd["features.3.weight"][:10]
    torch.save(sd, alexnet)
    with pytest.raises(lpips_alex.LpipsUnavailable, match=r"features.3.weight has shape \(10, 64, 5, 5\)"):
        lpips_alex.load_weights(alexnet, linear)


def test_launch_flag_names_the_folder_for_the_run(tmp_path, monkeypatch):
    import launch

    monkeypatch.setenv(lpips_alex.ENV_DIR, "elsewhere")
    lpips_alex.write_random_weights(str(tmp_path), seed=0)
    assert launch.main(["--config", str(tmp_path / "missing.yaml"), "--test", "--lpips-weights", str(tmp_path)]) == 2
    assert os.environ[lpips_alex.ENV_DIR] == str(tmp_path)
