"""Thin TritonPythonModel glue; the exporters copy these files to `<model>/1/model.py`."""

from pathlib import Path

GLUE_DIR = Path(__file__).parent
