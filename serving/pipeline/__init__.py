"""The pipeline stages, free of Triton: numpy, `tokenizers` and ONNX Runtime only, one module per stage. The Triton
models (`nestrank.serving.triton`), the exporter's parity gates and the benchmarks' in-process paths all run these."""
