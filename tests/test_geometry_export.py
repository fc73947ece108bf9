"""implicit-volume geometry (contraction, density bias, normals), materials and the mesh exporter (CPU)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import threestudio
from threestudio.models.geometry.contraction import contract_to_unisphere
from threestudio.utils.errors import ConfigError, UserError

TINY_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
             "base_resolution": 4, "per_level_scale": 1.5}
TINY_MLP = {"otype": "VanillaMLP", "activation": "ReLU", "output_activation": "none", "n_neurons": 16,
            "n_hidden_layers": 1}


def make_geometry(**overrides):
    cfg = {"radius": 1.0, "normal_type": "analytic", "density_bias": "blob_magic3d", "density_activation": "softplus",
           "density_blob_scale": 5.0, "density_blob_std": 0.5, "pos_encoding_config": TINY_GRID,
           "mlp_network_config": TINY_MLP, **overrides}
    return threestudio.find("implicit-volume")(cfg)


def random_directions(n):
    return torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)


def test_contraction_bounded_and_unbounded():
    bbox = torch.tensor([[-2.0] * 3, [2.0] * 3])
    inside = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    assert torch.allclose(contract_to_unisphere(inside, bbox, False), (inside + 2) / 4)
    # the inner ball (|x| <= radius) maps linearly onto the ball of radius 1/4 about the cube's centre
    assert torch.allclose(contract_to_unisphere(inside, bbox, True), inside / 8 + 0.5)
    far = random_directions(100) * 1e4
    contracted = contract_to_unisphere(far, bbox, True)
    assert ((contracted >= 0) & (contracted <= 1)).all()
    # infinity lies on the sphere of radius 1/2 about the centre
    assert torch.allclose((contracted - 0.5).norm(dim=-1), torch.full((100,), 0.5), atol=1e-3)


def test_forward_shapes_and_density_bias_variants():
    geo = make_geometry()
    pts = torch.randn(20, 3) * 0.5
    out = geo(pts, output_normal=True)
    assert out["density"].shape == (20, 1) and out["features"].shape == (20, 3)
    assert out["normal"].shape == (20, 3) and torch.equal(out["normal"], out["shading_normal"])
    assert torch.allclose(geo.forward_density(pts), out["density"], atol=1e-6)
    assert (out["density"] >= 0).all()
    # blob_magic3d: the network starts ~0, so density ≈ softplus(5·(1 − |x|/0.5))
    expected = torch.nn.functional.softplus(5.0 * (1 - pts.norm(dim=-1, keepdim=True) / 0.5))
    assert torch.allclose(out["density"], expected, atol=1e-2)
    assert geo.forward_density(torch.tensor([[500.0, 0.0, 0.0]])).item() < 1e-6  # far space starts empty
    dreamfusion = make_geometry(density_bias="blob_dreamfusion", density_activation="exp")
    assert dreamfusion.forward_density(torch.zeros(1, 3)).item() == pytest.approx(math.exp(5.0), rel=1e-2)
    constant = make_geometry(density_bias=-1, density_activation="trunc_exp")
    assert constant.forward_density(torch.ones(1, 3) * 0.3).item() == pytest.approx(math.exp(-1.0), rel=1e-2)
    with pytest.raises(ConfigError, match="density_bias"):
        make_geometry(density_bias="blob")
    with pytest.raises(ConfigError, match="normal_type"):
        make_geometry(normal_type="pred")
    with pytest.raises(ConfigError, match="set normal_type: finite_difference"):
        make_geometry(normal_type="finite_difference_laplacian")


@pytest.mark.parametrize("normal_type", ["analytic", "finite_difference"])
def test_normals_point_outward(normal_type):
    geo = make_geometry(normal_type=normal_type, finite_difference_normal_eps=1e-3)
    dirs = random_directions(50)
    pts = dirs * 0.4
    with torch.no_grad():
        normal = geo(pts, output_normal=True)["normal"]
    assert not normal.requires_grad
    assert torch.allclose(normal.norm(dim=-1), torch.ones(50), atol=1e-4)
    assert (torch.sum(normal * dirs, dim=-1) > 0.99).all()


def test_analytic_normals_are_differentiable_in_training():
    geo = make_geometry()
    geo.train()
    pts = torch.randn(30, 3) * 0.4
    normal = geo(pts, output_normal=True)["normal"]
    assert normal.requires_grad
    normal[:, 0].sum().backward()  # a normal loss must reach the hash grid and the density MLP
    assert geo.encoding.params.grad.abs().sum() > 0
    assert all(p.grad is not None for p in geo.density_network.parameters())


def _outputs_and_gradients(geo, points, method):
    """Outputs of a training forward with analytic normals and the gradients of a loss on all of them."""
    geo.cfg.analytic_normal_method = method
    geo.zero_grad(set_to_none=True)
    out = geo(points, output_normal=True)
    weights = torch.linspace(-1.0, 1.0, points.shape[0])[:, None]
    loss = (out["density"] * weights).sum() + (out["normal"] * torch.tensor([0.3, -0.5, 0.8]) * weights).sum()
    loss = loss + out["features"].square().sum()
    loss.backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in geo.named_parameters()}


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # ZeroNVS: unbounded contraction, blob_magic3d, softplus
        {"density_activation": "trunc_exp", "density_bias": "blob_dreamfusion"},
        {"density_activation": "exp", "density_bias": 0.5, "unbounded": False},  # bounded: clamped outside the box
    ],
)
def test_explicit_analytic_normals_equal_autograd_double_backward(overrides):
    torch.manual_seed(0)
    geo = make_geometry(pos_encoding_config=dict(TINY_GRID, log2_hashmap_size=6),  # hashed levels too
                        mlp_network_config=dict(TINY_MLP, n_hidden_layers=2), **overrides)
    assert geo.has_explicit_normals
    with torch.no_grad():
        geo.encoding.params.uniform_(-1.0, 1.0)  # a field with structure, not the near-zero initialisation
    points = torch.cat([torch.randn(200, 3) * 0.5, torch.randn(40, 3) * 3.0])  # inside and far outside the box
    geo.train()
    ref_out, ref_grads = _outputs_and_gradients(geo, points, "autograd")
    out, grads = _outputs_and_gradients(geo, points, "explicit")
    for key in ("density", "features", "normal"):
        torch.testing.assert_close(out[key], ref_out[key], rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
    with torch.no_grad():  # evaluation: the same normals, no graph
        normal = geo(points, output_normal=True)["normal"]
    assert not normal.requires_grad
    torch.testing.assert_close(normal, ref_out["normal"], rtol=1e-4, atol=1e-5)


def test_explicit_normals_need_supported_modules():
    with pytest.raises(ConfigError, match="analytic_normal_method explicit"):
        make_geometry(analytic_normal_method="explicit", density_activation="sigmoid")
    with pytest.raises(ConfigError, match="analytic_normal_method"):
        make_geometry(analytic_normal_method="double")


def test_materials():
    feats = torch.tensor([[0.0, 10.0, -10.0]])
    no_mat = threestudio.find("no-material")({})
    assert torch.allclose(no_mat(feats), torch.sigmoid(feats))
    diffuse = threestudio.find("diffuse-with-point-light-material")({"ambient_only_steps": 10})
    assert diffuse.requires_normal and not no_mat.requires_normal
    pos, normal = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]])
    light = torch.tensor([[0.0, 0.0, 5.0]])
    diffuse.eval()
    diffuse.do_update_step(0, 5)
    assert torch.allclose(diffuse(feats, positions=pos, shading_normal=normal, light_positions=light),
                          torch.sigmoid(feats))  # ambient-only phase: albedo
    diffuse.do_update_step(0, 10)
    lit = diffuse(feats, positions=pos, shading_normal=normal, light_positions=light)
    assert torch.allclose(lit, torch.sigmoid(feats) * 1.0, atol=1e-6)  # ambient 0.1 + diffuse 0.9·cos 0
    away = diffuse(feats, positions=pos, shading_normal=-normal, light_positions=light)
    assert torch.allclose(away, torch.sigmoid(feats) * 0.1, atol=1e-6)
    textureless = diffuse(feats, positions=pos, shading_normal=normal, light_positions=light, shading="textureless")
    assert torch.allclose(textureless, torch.ones(1, 3))
    with pytest.raises(UserError, match="normal"):
        diffuse(feats)


def make_exporter(geo, **cfg):
    material = threestudio.find("no-material")({})
    return threestudio.find("mesh-exporter")({"resolution": 40, **cfg}, geo, material)


def test_export_sphere_obj_and_ply(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    geo = make_geometry()
    # isosurface softplus(5·(1 − 2r)) = 2  ⇔  r = 0.5·(1 − ln(e²−1)/5)
    radius = 0.5 * (1 - math.log(math.exp(2.0) - 1) / 5)
    paths = make_exporter(geo, threshold=2.0).export(str(tmp_path / "export"))
    assert [os.path.basename(p) for p in paths] == ["model.obj", "model.ply"]
    for path in paths:
        mesh = trimesh.load(path, process=False, force="mesh")
        assert len(mesh.faces) > 100
        r = np.linalg.norm(mesh.vertices, axis=1)
        assert np.allclose(r, radius, atol=0.03)
        assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
        assert mesh.volume > 0  # faces wind outwards
        assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.1)
    with open(paths[0]) as f:
        vertex_line = next(line for line in f if line.startswith("v "))
    assert len(vertex_line.split()) == 7  # v x y z r g b
    assert not [p for p in os.listdir(tmp_path / "export") if p.startswith(".tmp")]


def test_export_auto_threshold_and_empty_mesh_error(tmp_path):
    pytest.importorskip("trimesh")
    geo = make_geometry()
    exporter = make_exporter(geo, threshold="auto", formats=["ply"], resolution=24)
    assert [os.path.basename(p) for p in exporter.export(str(tmp_path))] == ["model.ply"]
    with pytest.raises(UserError, match="range from"):
        make_exporter(geo, threshold=25.0, resolution=16).export(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="formats"):
        make_exporter(geo, formats=["glb"])


@pytest.mark.parametrize("method", ["autograd", "explicit"])
def test_fields_run_in_fp32_under_autocast(method):
    """Under mixed precision the geometry and proposal MLPs, the grid and the analytic normals stay fp32 (ZeroNVS
    disables autocast in its MLPs); CPU bf16 autocast stands in for CUDA's fp16."""
    from tests.test_rendering import camera_rays, make_renderer

    renderer = make_renderer("proposal", geometry={"analytic_normal_method": method},
                             material="diffuse-with-point-light-material", return_comp_normal=True)
    geometry = renderer.geometry
    mlps = {"density": geometry.density_network, "features": geometry.feature_network,
            "proposal": renderer.proposal_network[1]}
    seen = {}
    for name, mlp in mlps.items():
        mlp.register_forward_hook(lambda module, args, out, name=name: seen.setdefault(name, set()).add(out.dtype))
    rays_o, rays_d = camera_rays()
    renderer.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16  # autocast is on
        out = renderer(rays_o, rays_d)
        geo = geometry(torch.randn(8, 3) * 0.3, output_normal=True)
        loss = out["comp_rgb"].float().mean() + out["loss_proposal"]
    loss.backward()
    # (explicit normals call the density MLP's forward_with_input_gradient, which the hook does not see)
    assert set(seen) == set(mlps) - ({"density"} if method == "explicit" else set())
    assert all(dtypes == {torch.float32} for dtypes in seen.values())
    assert all(v.dtype == torch.float32 for v in geo.values())
    assert out["loss_proposal"].dtype == torch.float32 and out["weights"].dtype == torch.float32
    assert geometry.encoding.params.grad.dtype == torch.float32


class SphereAndSpecks(torch.nn.Module):
    """Density 25 + 100·(r − |x − c|) of a ball of radius 0.3 and of two detached specks of radius 0.02 (one far,
    one just outside the ball, inside the second pass's box): its isosurface at 25 is exactly those spheres."""

    CENTRE, RADIUS = (0.05, -0.02, 0.0), 0.3
    SPECKS = ((0.7, 0.6, -0.5), (0.33, 0.0, 0.25))

    def __init__(self):
        super().__init__()
        self.register_buffer("bbox", torch.tensor([[-1.0] * 3, [1.0] * 3]))

    def isosurface_bbox(self):
        return self.bbox

    def forward_density(self, points):
        def ball(centre, radius):
            return 25.0 + 100.0 * (radius - (points - torch.tensor(centre)).norm(dim=-1, keepdim=True))

        density = ball(self.CENTRE, self.RADIUS)
        for speck in self.SPECKS:
            density = torch.maximum(density, ball(speck, 0.02))
        return density


@pytest.mark.slow  # two marching-cubes passes per case (test_export_sphere_obj_and_ply stays in the quick loop)
@pytest.mark.parametrize("remove_outliers", [True, False])
def test_export_two_passes_and_outlier_removal(tmp_path, remove_outliers):
    trimesh = pytest.importorskip("trimesh")
    field = SphereAndSpecks()
    exporter = threestudio.find("mesh-exporter")({"formats": ["ply"], "remove_outliers": remove_outliers}, field)
    assert exporter.cfg.resolution == 128 and exporter.cfg.threshold == 25.0 and exporter.cfg.coarse_to_fine
    (path,) = exporter.export(str(tmp_path))
    mesh = trimesh.load(path, process=False, force="mesh")
    distance = np.linalg.norm(mesh.vertices - np.array(field.CENTRE), axis=1)
    near_specks = [np.linalg.norm(mesh.vertices - np.array(s), axis=1).min() for s in field.SPECKS]
    if not remove_outliers:  # the far speck stretches the second pass's box; both specks are meshed
        assert max(near_specks) < 0.03
        return
    assert min(near_specks) > 0.05  # the specks are gone
    assert np.allclose(distance, field.RADIUS, atol=2e-3)
    r = field.RADIUS
    assert mesh.area == pytest.approx(4 * math.pi * r**2, rel=0.02)
    # the second pass ran on the ball's box enlarged by 10 %: its grid is ~2.8x finer than the first pass's
    edges = np.linalg.norm(mesh.vertices[mesh.edges_unique[:, 0]] - mesh.vertices[mesh.edges_unique[:, 1]], axis=1)
    assert edges.max() < 2.0 / 127
    with pytest.raises(ConfigError, match="outlier_n_faces_threshold"):
        threestudio.find("mesh-exporter")({"outlier_n_faces_threshold": "many"}, field)


@pytest.mark.parametrize("threshold, specks_kept", [(0.002, True), (0.01, False), (40, True), (60, False)])
def test_outlier_threshold_is_a_fraction_or_a_face_count(tmp_path, threshold, specks_kept):
    """At 128³ (one pass) the specks have 44 and 52 faces, the ball 13692 (0.3–0.4 %): a float is a fraction of the
    ball's faces, an int a face count; components below it go."""
    trimesh = pytest.importorskip("trimesh")
    field = SphereAndSpecks()
    exporter = threestudio.find("mesh-exporter")(
        {"formats": ["ply"], "coarse_to_fine": False, "outlier_n_faces_threshold": threshold}, field)
    (path,) = exporter.export(str(tmp_path))
    mesh = trimesh.load(path, process=False, force="mesh")
    faces = sorted(len(c.faces) for c in mesh.split(only_watertight=False))
    assert faces[-1] > 13000
    assert faces[:-1] == ([44, 52] if specks_kept else [])


def _max_relative_error(value, reference):
    return float((value.double() - reference.double()).abs().max() / reference.double().abs().max())


def test_explicit_normals_equal_autograd_at_the_paper_geometry():
    """The paper's geometry (configs/zeronvs.yaml: 16 levels up to 4096, 2^19-row hashed levels, 2×32 MLP), the
    analytic normals' values and every parameter gradient of a loss on all outputs: explicit = autograd to 1e-5
    (max |Δ| / max |autograd|), the condition for explicit being the shipped default."""
    from threestudio.utils.config import config_to_primitive, load_config

    geometry_cfg = config_to_primitive(load_config("configs/zeronvs.yaml").system.geometry)
    assert geometry_cfg["analytic_normal_method"] == "explicit"  # the shipped default this test licenses
    torch.manual_seed(0)
    geo = threestudio.find("implicit-volume")(geometry_cfg)  # the reference path (CPU tensors)
    assert geo.encoding.n_levels == 16 and not all(geo.encoding.is_dense.tolist())
    with torch.no_grad():
        geo.encoding.params.uniform_(-0.05, 0.05)  # structure at every level, not the 1e-4 initialisation
    points = torch.cat([torch.randn(300, 3) * 0.6, torch.randn(30, 3) * 4.0])  # inside and beyond the radius
    geo.train()
    ref_out, ref_grads = _outputs_and_gradients(geo, points, "autograd")
    out, grads = _outputs_and_gradients(geo, points, "explicit")
    for key in ("density", "features", "normal"):
        assert _max_relative_error(out[key], ref_out[key]) <= 1e-5, key
    for name, grad in ref_grads.items():
        assert grad.abs().sum() > 0, name
        assert _max_relative_error(grads[name], grad) <= 1e-5, name
