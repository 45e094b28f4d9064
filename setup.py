"""Install tdfusion-edge: the four top-level folders map into the ``tdfusion_edge`` namespace."""
from setuptools import setup

PACKAGES = {
    "tdfusion_edge": "tdfusion_edge",
    "tdfusion_edge.cli": "tdfusion_edge/cli",
    "tdfusion_edge.models": "tdfusion_edge/models",
    "tdfusion_edge.metrics": "tdfusion_edge/metrics",
    "tdfusion_edge.imaging": "tdfusion_edge/imaging",
    "tdfusion_edge.data": "tdfusion_edge/data",
    "tdfusion_edge.tasks": "tdfusion_edge/tasks",
    "tdfusion_edge.validation": "tdfusion_edge/validation",
    "tdfusion_edge.kernels": "kernels",
    "tdfusion_edge.kernels.cuda": "kernels/cuda",
    "tdfusion_edge.train": "train",
    "tdfusion_edge.export": "export",
    "tdfusion_edge.apps": "apps",
}

setup(
    name="tdfusion-edge",
    version="0.1.0",
    description="Task-driven infrared-visible image fusion: training, Triton kernels, export and a live app",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "tdfusion_edge": ["weights/*.pt", "configs/*.yaml"],
        "tdfusion_edge.kernels.cuda": ["*.cu"],
    },
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "opencv-python-headless",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "scipy",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "ultralytics",
        "transformers",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-timeout", "scikit-image", "scikit-learn", "sewar==0.4.10"],
        "gpu": ["tensorrt", "pycuda"],
    },
    entry_points={"console_scripts": ["tdfusion-edge=tdfusion_edge.cli:main"]},
)
