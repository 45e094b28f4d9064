"""One validation layer per kind of untrusted input, shared by every command.

Each module checks one kind of input before anything is built from it and raises a
``TDFusionError`` subclass with a one-line message naming the input:
``checkpoint`` (fusion/loss-generator checkpoints), ``detector`` (YOLO weights),
``image`` (decoded images), ``output_path`` (where results are written),
``homography`` (registration files), ``dataset_yaml`` (dataset descriptions),
``numbers`` (numeric CLI values).
"""
