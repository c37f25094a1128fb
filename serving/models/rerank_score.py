"""Compatibility for stubs exported before the layout by concern: see nestrank.serving.triton.rerank_score."""

from nestrank.serving.triton.rerank_score import TritonPythonModel  # noqa: F401
