"""Private (secure computation) methods.

* :mod:`honed.private.mpc` - the CrypTen import shim (extra ``mpc``), ``crypten.nn`` MLP builders and
  a real 2-party (gloo on loopback) harness that measures MPC seconds, bytes and rounds per example.
* :mod:`honed.private.proxy_selection` - SelectFormer (arXiv:2310.02373): a tiny target Transformer,
  MPC-friendly proxies whose softmax / LayerNorm are emulated by small MLPs, multiphase entropy
  sieving and the selection cost computed from measured per-example MPC costs.
"""
