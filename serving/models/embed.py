"""Compatibility for stubs exported before the layout by concern: see nestrank.serving.triton.embed."""

from nestrank.serving.triton.embed import TritonPythonModel  # noqa: F401
