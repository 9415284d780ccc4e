"""Stage 3: resolved IR → SymPy formulas: the function table (`functions`) and its SymPy classes
(`sympy_functions`), stability rewrites and lowerings (`rewrites`), derivatives and CSE of elementwise
losses (`derive`) and of losses reduced over a class axis (`reductions`). Imported only on a cache miss."""
