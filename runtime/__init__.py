"""dsocr.runtime: the torch-free floor of dsocr (numpy, Pillow, tokenizers; onnxruntime/TensorRT lazily)."""

__version__ = "0.1.0"
