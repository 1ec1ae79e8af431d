"""Distributed training methods.

* :mod:`honed.distributed.terngrad` - TernGrad's tensor operations (arXiv:1705.07878): per-layer
  scalers, stochastic unbiased ternarisation to ``{-s, 0, s}``, 2-bit packing, and a single-process
  simulation of the N-worker exchange.
* :mod:`honed.distributed.terngrad_hook` - the same method as a DDP communication hook
  (``ddp.register_comm_hook(TernGradState(...), terngrad_hook)``) that really sends packed 2-bit codes.
* :mod:`honed.distributed.launch` - ``run_workers(fn, world_size, args)``: N gloo CPU worker processes
  on a free port, returning each rank's result (for tests, experiments and users without torchrun).
"""
