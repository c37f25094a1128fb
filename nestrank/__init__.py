"""nestrank: embedding models and FBNL rerankers compiled to ONNX and served from NVIDIA Triton."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nestrank")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
