"""Stage 4: SymPy plans → Python source of Numba kernels: one shared printer, one skeleton per kind of
kernel (elementwise, rows, blocks), and each target (CPU, CUDA) as a dialect in `targets`."""
