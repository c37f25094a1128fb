"""Compatibility: repositories exported before the layout by concern have `model.py` stubs that import
`nestrank.serving.models.<kind>`. Each module here re-exports that kind's class from `nestrank.serving.triton`."""
