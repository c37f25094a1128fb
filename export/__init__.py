"""Checkpoints → ONNX → parity gate → Triton model directories."""


class ParityError(RuntimeError):
    """A compiled model does not match its PyTorch reference closely enough to be written."""
