"""The oracle prior: a known procedural world and an exact diffusion-model stand-in for it (docs/GUIDANCE.md)."""

from zeronvs_diffusion.oracle.model import ORACLE_PREFIX, OracleModel, load_oracle
from zeronvs_diffusion.oracle.scene import Scene, SceneError, load_scene, render

__all__ = ["ORACLE_PREFIX", "OracleModel", "Scene", "SceneError", "load_oracle", "load_scene", "render"]
