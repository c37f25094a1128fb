"""Compatibility for stubs exported before the layout by concern: see nestrank.serving.triton.rerank."""

from nestrank.serving.triton.rerank import TritonPythonModel  # noqa: F401
