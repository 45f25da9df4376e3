"""Batched kernels with a C++/CUDA implementation and a pure-PyTorch reference each."""
