"""Developer instruments, not the library: nothing here runs during training or inference.

- :mod:`threestudio.profiling.step_trace`: traces one training step on fake CUDA tensors (device errors, FLOPs,
  eager traffic, live memory, kernel launches, the per-step floor); ``python scripts/bench.py trace``.
- :mod:`threestudio.profiling.fake_cuda` (with ``csrc/fake_cuda.cpp``): the do-nothing CUDA device guard and hooks
  that let a CPU build of PyTorch run fake CUDA tensors through a backward.
- :mod:`threestudio.profiling.aot`: ahead-of-time compilation of the Triton kernels of :mod:`threestudio.kernels`
  for sm_80/sm_90 (PTX, cubin, register and spill counts) without a GPU.

Importing this package imports nothing heavy (``fake_cuda`` must be installed before ``import torch``).
"""
