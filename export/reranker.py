"""FBNL reranker checkpoint (T5Gemma 2 or T5) → passage-encoder + scorer ONNX graphs → parity gate →
three Triton models: `<name>_encode`, `<name>_score` and `<name>` (BLS, with the passage-state cache)."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.export import ParityError
from nestrank.export.precision import convert_precision
from nestrank.export.triton_config import python_model_config, write_config
from nestrank.serving.models import GLUE_DIR
from nestrank.serving.rerank_config import PLAIN_PROMPT_TEMPLATE, RerankerConfig
from nestrank.serving.reranker import ENCODER_FILE, SCORER_FILE, TOKENIZER_FILE, FBNLReranker, RerankTokenizer, sigmoid

PARITY_MAX_SCORE_DIFF = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}  # fp16/int8: measured drift bounds (README)


def load_checkpoint(checkpoint: str | Path):
    """(model, architecture) with eager attention, so both exporters see plain tensor ops."""
    from transformers import AutoConfig

    architecture = AutoConfig.from_pretrained(str(checkpoint)).model_type
    if architecture == "t5gemma2":
        from transformers import T5Gemma2ForConditionalGeneration as model_class
    elif architecture == "t5":
        from transformers import T5ForConditionalGeneration as model_class
    else:
        raise ValueError(f"{checkpoint}: architecture {architecture!r} is not an FBNL reranker (t5gemma2 or t5)")
    model = model_class.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    return model, architecture


def answer_token_ids(tokenizer_json: Path) -> tuple[int, int]:
    """The ids of "yes" and "no" from the checkpoint's own tokenizer (each must be one token)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    ids = []
    for word in ("yes", "no"):
        encoding = tokenizer.encode(word, add_special_tokens=False)
        if len(encoding.ids) != 1 or encoding.special_tokens_mask[0]:
            raise ValueError(f"the tokenizer turns {word!r} into {encoding.tokens}; the scorer needs one plain token")
        ids.append(encoding.ids[0])
    unknown = {tokenizer.token_to_id(t) for t in ("<unk>", "[UNK]", "<UNK>")} - {None}
    if ids[0] == ids[1] or unknown & set(ids):
        raise ValueError(f"'yes' and 'no' must be distinct known tokens, got ids {ids}")
    return ids[0], ids[1]


class PassageEncoderGraph(torch.nn.Module):
    """(input_ids, attention_mask) → token_states [B, L, H]; the query never enters here."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ScorerGraph(torch.nn.Module):
    """(decoder_input_ids, passage_states, passage_mask) → (scores, margins): the decoder reads the prompt,
    cross-attends to the pooled passage states, and compares logit(yes) with logit(no) at the last position."""

    def __init__(self, model: torch.nn.Module, yes_id: int, no_id: int):
        super().__init__()
        self.model = model
        self.yes_id, self.no_id = yes_id, no_id
        self.keep_last_only = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(self, decoder_input_ids, passage_states, passage_mask):
        from transformers.modeling_outputs import BaseModelOutput

        extra = {"logits_to_keep": 1} if self.keep_last_only else {}
        # No use_cache=False: without a cache, transformers' mask code probes for packed sequences (aten::diff).
        out = self.model(
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=BaseModelOutput(last_hidden_state=passage_states),
            attention_mask=passage_mask,
            **extra,
        )
        logits = out.logits[:, -1]
        margins = logits[:, self.yes_id] - logits[:, self.no_id]
        return torch.sigmoid(margins), margins


def export_graphs(model: torch.nn.Module, config: RerankerConfig, out_dir: Path) -> None:
    ids = torch.randint(4, 64, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The dynamo exporter: TorchScript fails on T5Gemma 2's bidirectional sliding-window mask.
    torch.onnx.export(
        PassageEncoderGraph(model),
        (ids, mask),
        str(out_dir / ENCODER_FILE),
        input_names=["input_ids", "attention_mask"],
        output_names=["token_states"],
        dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
        dynamo=True,
        opset_version=18,
        verbose=False,
    )
    prompt = torch.randint(4, 64, (2, 12))
    states = torch.randn(2, 6, config.hidden_size)
    passage_mask = torch.ones(2, 6, dtype=torch.int64)
    passage_mask[1, 4:] = 0
    groups, prompt_len = torch.export.Dim("groups"), torch.export.Dim("prompt")
    # dynamo: TorchScript bakes T5's relative-position buckets for the example lengths.
    torch.onnx.export(
        ScorerGraph(model, config.yes_token_id, config.no_token_id).eval(),
        (prompt, states, passage_mask),
        str(out_dir / SCORER_FILE),
        input_names=["decoder_input_ids", "passage_states", "passage_mask"],
        output_names=["scores", "margins"],
        dynamic_shapes={
            "decoder_input_ids": {0: batch, 1: prompt_len},
            "passage_states": {0: batch, 1: groups},
            "passage_mask": {0: batch, 1: groups},
        },
        dynamo=True,
        opset_version=18,
        verbose=False,
    )


def remove_unreferenced_data(graph: Path) -> None:
    """Drop `<graph>.data` files the (converted) graph no longer points at."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    used = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for path in graph.parent.glob(f"{graph.name}.*"):
        if path.name not in used:
            path.unlink()


def reference_mep(states: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MEP of one unpadded passage [L, H], written as plainly as possible: the check on serving/mep.py."""
    groups = [states[start : start + ratio] for start in range(0, states.shape[0], ratio)]
    return torch.stack([g.mean(dim=0) for g in groups]), torch.ones(len(groups), dtype=torch.int64)


@torch.no_grad()
def reference_margins(
    model: torch.nn.Module, config: RerankerConfig, files: Path, query: str, documents: list[str], ratio: int
) -> np.ndarray:
    """The PyTorch reference: each candidate alone (no padding) through the transformers model:
    encoder → MEP → decoder cross-attending to the pooled states → logit(yes) - logit(no)."""
    from transformers.modeling_outputs import BaseModelOutput

    tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
    prompt = torch.from_numpy(tokenizer.encode_prompt(query, config.default_instruction))[None]
    margins = []
    for ids in tokenizer.encode_documents(documents):
        ids = torch.from_numpy(ids)[None]
        states = model.get_encoder()(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        pooled, mask = reference_mep(states, ratio)
        logits = model(
            decoder_input_ids=prompt,
            encoder_outputs=BaseModelOutput(last_hidden_state=pooled[None]),
            attention_mask=mask[None],
            use_cache=False,
        ).logits[0, -1]
        margins.append(float(logits[config.yes_token_id] - logits[config.no_token_id]))
    return np.asarray(margins, dtype=np.float32)


def parity_documents(max_tokens: int) -> list[str]:
    """Shorter than any ratio, not a multiple of the ratio, typical, and past the length limit."""
    from nestrank.texts import realistic_texts

    return ["ok", "tiny doc", "a document of seven words, give or take", *realistic_texts(4, seed=21),
            " ".join(["long"] * (2 * max_tokens))]  # fmt: skip


@dataclass(frozen=True)
class RerankerParity:
    precision: str
    max_score_diff: dict[int, float]  # per ratio
    max_margin_diff: dict[int, float]

    def passed(self) -> bool:
        return max(self.max_score_diff.values()) <= PARITY_MAX_SCORE_DIFF[self.precision]

    def __str__(self) -> str:
        per_ratio = ", ".join(f"r={r}: {d:.2e}" for r, d in sorted(self.max_score_diff.items()))
        return f"parity {self.precision}: max |Δscore| {per_ratio} (gate {PARITY_MAX_SCORE_DIFF[self.precision]})"


def check_parity(model, config: RerankerConfig, files: Path, precision: str) -> RerankerParity:
    ours = FBNLReranker.load(files, config, providers=("CPUExecutionProvider",))
    query = "which documents explain how to read a file"
    documents = parity_documents(config.max_passage_tokens)
    score_diff, margin_diff = {}, {}
    for ratio in config.ratios:
        expected = reference_margins(model, config, files, query, documents, ratio)
        got = ours.margins(query, documents, ratio)
        score_diff[ratio] = float(np.abs(sigmoid(got) - sigmoid(expected)).max())
        margin_diff[ratio] = float(np.abs(got - expected).max())
    return RerankerParity(precision, score_diff, margin_diff)


def model_configs(name: str, config: RerankerConfig, max_batch_size: int) -> dict[str, mc.ModelConfig]:
    params = config.to_parameters()
    bytes_, fp16, fp32, int32 = mc.TYPE_STRING, mc.TYPE_FP16, mc.TYPE_FP32, mc.TYPE_INT32
    return {
        f"{name}_encode": python_model_config(
            f"{name}_encode",
            inputs=[("documents", bytes_, [1])],
            outputs=[("passage_states", fp16, [-1, config.hidden_size]), ("passage_counts", int32, [-1])],
            max_batch_size=max_batch_size,
            parameters=params,
        ),
        f"{name}_score": python_model_config(
            f"{name}_score",
            inputs=[
                ("decoder_input_ids", mc.TYPE_INT64, [-1]),
                ("passage_states", fp32, [-1, -1, config.hidden_size]),
                ("passage_counts", int32, [-1, -1]),
            ],  # fmt: skip
            outputs=[("scores", fp32, [-1]), ("margins", fp32, [-1])],
            max_batch_size=0,
            parameters=params,
        ),
        name: python_model_config(
            name,
            inputs=[
                ("query", bytes_, [1]),
                ("documents", bytes_, [-1]),
                ("passage_ids", bytes_, [-1]),
                ("passage_states", fp16, [-1, -1, config.hidden_size]),
                ("passage_counts", int32, [-1, -1]),
            ],  # fmt: skip
            optional=("query", "documents", "passage_ids", "passage_states", "passage_counts"),
            outputs=[
                ("scores", fp32, [-1]),
                ("indices", int32, [-1]),
                ("documents", bytes_, [-1]),
                ("passage_ids", bytes_, [-1]),
            ],  # fmt: skip
            max_batch_size=0,
            parameters=params,
        ),
    }


@dataclass(frozen=True)
class RerankerExport:
    model_dirs: tuple[Path, ...]
    config: RerankerConfig
    parity: RerankerParity


def export_reranker(
    checkpoint: str | Path,
    name: str,
    repository: str | Path,
    *,
    ratios: tuple[int, ...] | None = None,
    max_query_tokens: int = 512,
    max_passage_tokens: int = 1024,
    precision: str = "fp32",
    max_batch_size: int = 64,
    log=print,
) -> RerankerExport:
    checkpoint = Path(checkpoint)
    model, architecture = load_checkpoint(checkpoint)
    tokenizer_json = checkpoint / TOKENIZER_FILE
    if not tokenizer_json.exists():
        raise FileNotFoundError(f"{checkpoint} has no tokenizer.json")
    yes_id, no_id = answer_token_ids(tokenizer_json)
    hidden = model.config.decoder.hidden_size if architecture == "t5gemma2" else model.config.d_model
    extra = {}
    if ratios:
        extra["ratios"] = tuple(sorted(ratios))
        extra["default_ratio"] = 4 if 4 in ratios else min(ratios)
    if architecture == "t5":
        extra["prompt_template"] = PLAIN_PROMPT_TEMPLATE
        extra["decoder_start_token_id"] = int(model.config.decoder_start_token_id)
    config = RerankerConfig(
        architecture=architecture, hidden_size=int(hidden), yes_token_id=yes_id, no_token_id=no_id,
        max_query_tokens=max_query_tokens, max_passage_tokens=max_passage_tokens, weights=precision, **extra,
    )  # fmt: skip

    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository.parent))
    staging.chmod(0o755)
    try:
        files = staging / "files"
        files.mkdir()
        export_graphs(model, config, files)
        if precision != "fp32":
            for graph in (ENCODER_FILE, SCORER_FILE):
                convert_precision(files / graph, files / f"{graph}.{precision}", precision)
                (files / f"{graph}.{precision}").replace(files / graph)
                remove_unreferenced_data(files / graph)
        shutil.copy(tokenizer_json, files / TOKENIZER_FILE)
        report = check_parity(model, config, files, precision)
        log(str(report))
        if not report.passed():
            raise ParityError(f"{name}: {report}; nothing written")

        layout = {
            f"{name}_encode": ("rerank_encode.py", (ENCODER_FILE, TOKENIZER_FILE)),
            f"{name}_score": ("rerank_score.py", (SCORER_FILE,)),
            name: ("rerank.py", (TOKENIZER_FILE,)),
        }
        configs = model_configs(name, config, max_batch_size)
        for model_name, (glue, needed) in layout.items():
            version_dir = staging / model_name / "1"
            version_dir.mkdir(parents=True)
            shutil.copy(GLUE_DIR / glue, version_dir / "model.py")
            for file_name in needed:  # with the graph's external weights (`<graph>.data`), if any
                for path in files.glob(f"{file_name}*"):
                    shutil.copy(path, version_dir / path.name)
            write_config(configs[model_name], staging / model_name)
        targets = []
        for model_name in layout:
            target = repository / model_name
            if target.exists():
                shutil.rmtree(target)
            (staging / model_name).rename(target)
            targets.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RerankerExport(tuple(targets), config, report)
