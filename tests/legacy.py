"""What the last release (nestrank 0.1.0, before the layout by concern) wrote into an exported model's `model.py`,
verbatim: its stubs import `nestrank.serving.models.<kind>`. The session repository serves some models with it."""

from __future__ import annotations

from pathlib import Path

LEGACY_STUB = '''"""Triton Python model: the installed nestrank's nestrank.serving.models.{kind}; exported by nestrank 0.1.0."""

import os
import site

# The backend stub runs its own interpreter: `nestrank serve` names the environment to import from.
for _site_dir in filter(None, os.environ.get("NESTRANK_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_site_dir)

from nestrank.serving.models.{kind} import TritonPythonModel  # noqa: E402,F401
'''


def as_exported_by_the_last_release(model_dir: Path) -> None:
    """Rewrites the model's stub as the last release exported it (same kind, read from today's stub)."""
    stub = model_dir / "1" / "model.py"
    kind = stub.read_text().split("from nestrank.serving.triton.", 1)[1].split(" ", 1)[0]
    stub.write_text(LEGACY_STUB.format(kind=kind))


# What the last release's exports of a reranker declare, where this one's differ (the padded passage layout): per
# model kind, {tensor: dims} of inputs and outputs; None drops the tensor. Their parameters lack the limits and
# the `passage_layout` that came after: they are refused at load (test_rerank_serving.py).
LAST_RELEASE_TENSORS = {
    "rerank_encode": ({"documents": [1]}, {"passage_groups": None}),
    "rerank_score": (
        {"passage_states": [-1, -1, "H"], "passage_counts": [-1, -1], "passage_groups": None},
        {"scores": [-1]},
    ),
    "rerank": ({"passage_states": [-1, -1, "H"], "passage_counts": [-1, -1], "passage_groups": None}, {}),
}
PARAMETERS_SINCE = ("passage_layout", "max_encode_documents", "encode_batch_tokens", "max_requests_in_flight")


def as_configured_by_the_last_release(model_dir: Path, name: str, kind: str, hidden: int) -> None:
    """Rewrites a reranker model's config.pbtxt as the last release wrote it (padded passage states), named `name`."""
    from tritonclient.grpc import model_config_pb2 as mc

    from nestrank.export.triton_config import read_config, write_config

    config = read_config(model_dir)
    config.name = name
    for parameter in PARAMETERS_SINCE:
        if parameter in config.parameters:
            del config.parameters[parameter]
    inputs, outputs = LAST_RELEASE_TENSORS[kind]
    for tensors, changes in ((config.input, inputs), (config.output, outputs)):
        for tensor_name, dims in changes.items():
            found = [i for i, t in enumerate(tensors) if t.name == tensor_name]
            if dims is None:
                for i in reversed(found):
                    del tensors[i]
                continue
            tensor = tensors[found[0]] if found else tensors.add(name=tensor_name, data_type=mc.TYPE_FP32)
            del tensor.dims[:]
            tensor.dims.extend(hidden if d == "H" else d for d in dims)
    write_config(config, model_dir)
