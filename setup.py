from setuptools import find_packages, setup

setup(
    name="lightdet",
    version="0.1.0",
    description="A readable YOLOv5 detector with faithful lightweight backbones",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lightdet", "lightdet.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy>=1.23", "pillow>=9.0", "pycocotools>=2.0.6", "tqdm>=4.64"],
    # export.py, and --weights model.onnx in eval.py / predict.py; tested with onnx 1.23.2, onnxruntime 1.32.0
    extras_require={"test": ["pytest>=7"], "export": ["onnx>=1.23", "onnxruntime>=1.32"]},
)
