"""Stage 5 and calls: the on-disk cache of generated modules (`cache`), the callable losses (`loss`,
`sequence`), argument layout and checks (`layout`), threads and buffers, the GPU path (`gpu`), and what
generated modules import at run time (`jit`, `kernel_math`)."""
