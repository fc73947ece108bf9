"""Triton kernels for the NeRF side, each beside a pure-PyTorch reference that stays the default everywhere else.

Importing this package imports nothing heavy and never Triton. Each kernel module (the values of :data:`KERNELS`)
imports ``triton`` at its top, so it is imported only by :func:`threestudio.utils.fast_paths.triton_kernels`, after
``triton`` was found importable, and by the interpreter tests. A kernel module provides:

- ``self_check(device)``: runs the kernels on a small batch on ``device`` and raises when values or gradients
  differ from the reference (called once per device before the kernels are used);
- the functions its caller uses (autograd-aware, ``torch.autograd.Function`` underneath).

The caller keeps the reference and asks ``triton_kernels(name, mode, device)`` whether to use the module.
"""

KERNELS = {
    # multiresolution hash-grid encoding: forward, table gradient, input Jacobian (explicit analytic normals)
    "hash_grid": "threestudio.kernels.hash_grid",
    # volume-rendering compositing along dense (rays, samples) tensors: weights and weighted sums
    "compositing": "threestudio.kernels.compositing",
    # the NeRF field fused: hash-grid encoding + density and feature MLPs (+ explicit normals), forward and backward
    "fused_field": "threestudio.kernels.fused_field",
}
