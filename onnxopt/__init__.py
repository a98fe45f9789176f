"""onnxopt: an ONNX graph-rewriting compiler for deployment."""
__version__ = "0.1.0"
