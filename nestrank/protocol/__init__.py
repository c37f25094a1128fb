"""The wire contract, the one thing serving, clients, export and bench share: tensors (names, dtypes, dims), the
served configs and request options with their validation, precisions, passage-state packing, passage ids, the
parameters maps, headers, and the error table. Pure Python and numpy: a client-only install needs nothing more.

| module | holds |
| --- | --- |
| `tensors` | `Tensor` / `Signature`: what each model takes and returns |
| `embedding` | `EmbedderConfig`, `parse_options`, precisions, the embed model's signature |
| `reranking` | `RerankerConfig`, `parse_rerank_options`, prompt templates, `passage_id`, the three models' signatures |
| `passages` | `pack` / `unpack` of pooled states, `PassageStates` |
| `parameters` | config ⇄ parameters, request parameter readers, `ModelInfo` |
| `headers` | API / admin key headers, the version parameter |
| `errors` | the error types and their one table: gRPC status, Triton code, HTTP status, retry |
"""
