"""CUDA C kernels of the live app (``preprocess.cu``), loaded at run time by ``tdfusion_edge.apps.cuda_kernels``
with pycuda or CuPy; their NumPy twins are in ``tdfusion_edge.apps.preprocess``."""
