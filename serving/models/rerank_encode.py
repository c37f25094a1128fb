"""Compatibility for stubs exported before the layout by concern: see nestrank.serving.triton.rerank_encode."""

from nestrank.serving.triton.rerank_encode import TritonPythonModel  # noqa: F401
