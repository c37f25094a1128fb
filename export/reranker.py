"""FBNL reranker checkpoint (T5Gemma 2 or T5) → passage-encoder + scorer ONNX graphs → parity gate →
three Triton models: `<name>_encode`, `<name>_score` and `<name>` (BLS, with the passage-state cache).

The gate compares the compiled pipeline with the official KaLM-Reranker-V1 semantics (`reference.py`),
on the checkpoint's own `transformers` tokenizer and model in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.export import ParityError
from nestrank.export.checkpoint import resolve_checkpoint
from nestrank.export.precision import convert_precision, move_to_own_file
from nestrank.export.reference import reference_scores
from nestrank.export.triton_config import python_model_config, write_bytes_warmup, write_model
from nestrank.protocol import graphs as g
from nestrank.protocol.passages import STATE_DTYPE
from nestrank.protocol.reranking import (
    DOCUMENTS,
    RAGGED,
    RerankerConfig,
    encode_signature,
    rerank_signature,
    score_signature,
)
from nestrank.serving.pipeline.kalm import templates
from nestrank.serving.pipeline.passage_encoder import EMBEDDING_FILE, ENCODER_FILE, passage_fingerprint
from nestrank.serving.pipeline.reranker import FBNLReranker
from nestrank.serving.pipeline.scorer import SCORER_FILE, sigmoid
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE
from nestrank.texts import realistic_texts

WARMUP_FILE = "documents"  # under <name>_encode/warmup/
PARITY_MAX_SCORE_DIFF = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}  # fp16/int8: measured drifts (docs/reranker.md)
FLOAT16_STATES_MAX_SCORE_DIFF = 1e-3  # what holding passage states in float16 may add (measured: ≤ 1.0e-4)
# int8 stored states against float16 ones; measured on the random test checkpoints: ≤ 1.7e-3 at the KaLM Nano shape,
# ≤ 4.5e-3 on the tiny T5 (docs/reranker.md). Past it, the export fails: every server may be started with int8 states.
INT8_STATES_MAX_SCORE_DIFF = 1e-2


def load_checkpoint(checkpoint: str | Path, dtype: torch.dtype = torch.float32):
    """(model, architecture) in `dtype` whatever the stored dtype (KaLM checkpoints are bfloat16 on disk), as the
    official code loads it on CPU; eager attention, so the exporter sees plain tensor ops."""
    from transformers import AutoConfig

    architecture = AutoConfig.from_pretrained(str(checkpoint)).model_type
    if architecture == "t5gemma2":
        from transformers import T5Gemma2ForConditionalGeneration as model_class
    elif architecture == "t5":
        from transformers import T5ForConditionalGeneration as model_class
    else:
        raise ValueError(f"{checkpoint}: architecture {architecture!r} is not an FBNL reranker (t5gemma2 or t5)")
    # `dtype` at load, not a cast afterwards: buffers built at init (Gemma's embedding scale) then match too.
    model = model_class.from_pretrained(str(checkpoint), dtype=dtype, attn_implementation="eager").eval()
    return model, architecture


def load_tokenizer(checkpoint: str | Path):
    """The tokenizer the official code uses: `AutoTokenizer`. In transformers 5 a class such as GemmaTokenizer
    rebuilds parts of its pipeline instead of reading tokenizer.json verbatim, so this, not the file, is served."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))


def save_serving_tokenizer(tokenizer, path: Path) -> None:
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()  # serving sets its own limits per side
    backend.no_padding()
    backend.save(str(path))


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """The ids of "yes" and "no", as the official code finds them (each must be one token)."""
    ids = []
    for word in ("yes", "no"):
        found = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(found) != 1:
            raise ValueError(f"the tokenizer turns {word!r} into {found}; the scorer needs one token")
        ids.append(found[0])
    if ids[0] == ids[1] or tokenizer.unk_token_id in ids or set(ids) & set(tokenizer.all_special_ids):
        raise ValueError(f"'yes' and 'no' must be distinct known plain tokens, got ids {ids}")
    return ids[0], ids[1]


class PassageEncoderGraph(torch.nn.Module):
    """(input_ids, attention_mask) → token_states [B, L, H]; the query never enters here."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ScorerGraph(torch.nn.Module):
    """(decoder_input_ids, prompt_lengths, passage_states, passage_mask) → margins: the decoder reads each row's
    prompt (right-padded, so that rows of several requests share a run: the decoder is causal, and no position
    before the padding sees it) and cross-attends to the pooled passage states; the head yields logit(yes) and
    logit(no) at the row's last prompt position, and the graph their difference only (the rerank service takes its
    sigmoid, once). Wrap the export in `answer_rows_only` so that the head holds only those two rows."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, prompt_lengths, passage_states, passage_mask):
        from transformers.modeling_outputs import BaseModelOutput

        # No use_cache=False: without a cache, transformers' mask code probes for packed sequences (aten::diff).
        out = self.model(
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=BaseModelOutput(last_hidden_state=passage_states),
            attention_mask=passage_mask,
        )
        logits = out.logits.float()  # [B, L, 2]: the yes row, then the no row, at every position
        last = (prompt_lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
        answers = logits.gather(1, last).squeeze(1)  # [B, 2] at each row's last prompt token
        return answers[:, 0] - answers[:, 1]


@contextlib.contextmanager
def answer_rows_only(model: torch.nn.Module, yes_id: int, no_id: int):
    """The model's own head (T5's tied-embedding scaling, Gemma's soft-capping) with just the yes/no rows of
    its output projection: 2 × H instead of vocabulary × H multiply-adds per candidate."""
    full = model.get_output_embeddings()
    rows = torch.nn.Linear(full.in_features, 2, bias=full.bias is not None)
    with torch.no_grad():
        rows.weight.copy_(full.weight[[yes_id, no_id]])
        if full.bias is not None:
            rows.bias.copy_(full.bias[[yes_id, no_id]])
    model.set_output_embeddings(rows)
    try:
        yield model
    finally:
        model.set_output_embeddings(full)


def export_graphs(model: torch.nn.Module, config: RerankerConfig, encoder_path: Path, scorer_path: Path) -> None:
    ids = torch.randint(4, 64, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The dynamo exporter: TorchScript fails on T5Gemma 2's bidirectional sliding-window mask.
    # Weights go to `<graph>.data` (external data), so graphs past 2 GiB are written too.
    torch.onnx.export(
        PassageEncoderGraph(model).eval(),
        (ids, mask),
        str(encoder_path),
        input_names=list(g.TOKEN_INPUTS),
        output_names=[g.TOKEN_STATES],
        dynamic_shapes={g.INPUT_IDS: {0: batch, 1: length}, g.ATTENTION_MASK: {0: batch, 1: length}},
        dynamo=True,
        external_data=True,
        opset_version=18,
        verbose=False,
    )
    prompt = torch.randint(4, 64, (2, 12))
    prompt_lengths = torch.tensor([12, 9])
    states = torch.randn(2, 6, config.hidden_size)
    passage_mask = torch.ones(2, 6, dtype=torch.int64)
    passage_mask[1, 4:] = 0
    groups, prompt_len = torch.export.Dim("groups"), torch.export.Dim("prompt")
    # dynamo: TorchScript bakes T5's relative-position buckets for the example lengths.
    with answer_rows_only(model, config.yes_token_id, config.no_token_id):
        torch.onnx.export(
            ScorerGraph(model).eval(),
            (prompt, prompt_lengths, states, passage_mask),
            str(scorer_path),
            input_names=[g.DECODER_INPUT_IDS, g.PROMPT_LENGTHS, g.PASSAGE_STATES, g.PASSAGE_MASK],
            output_names=[g.MARGINS],
            dynamic_shapes={
                g.DECODER_INPUT_IDS: {0: batch, 1: prompt_len},
                g.PROMPT_LENGTHS: {0: batch},
                g.PASSAGE_STATES: {0: batch, 1: groups},
                g.PASSAGE_MASK: {0: batch, 1: groups},
            },
            dynamo=True,
            external_data=True,
            opset_version=18,
            verbose=False,
        )


def _words(count: int, seed: int) -> str:
    words = " ".join(realistic_texts(count // 8 + 8, seed=seed, median_words=24)).split()
    while len(words) < count:
        words += words
    return " ".join(words[:count])


def parity_documents(max_passage_tokens: int) -> list[str]:
    """Shorter than any ratio, not a multiple of the ratio, typical, a special token in the text, past
    a 512-token sliding window (when the limit allows it), and past the passage limit."""
    return ["ok", "tiny doc", "a document of seven words, give or take", *realistic_texts(4, seed=21),
            "an image ends here <end_of_image> and text goes on", _words(int(0.6 * max_passage_tokens), seed=5),
            _words(2 * max_passage_tokens, seed=6)]  # fmt: skip


def share_embedding(encoder_graph: Path, scorer_graph: Path, vocab_size: int) -> bool:
    """Both graphs hold the (tied) vocabulary × H input embedding: 671 MB in fp32 for KaLM-Reranker-V1-Nano.
    Each gets it in its own `embedding.data`, and when the two are byte-identical one file is hard-linked to
    the other: ONNX Runtime maps external weights, so the encode and score processes then share the page
    cache for it, and only the rows of tokens actually seen become resident."""
    import filecmp

    import onnx

    names = []
    for graph in (encoder_graph, scorer_graph):
        proto = onnx.load(str(graph), load_external_data=False)
        found = [t.name for t in proto.graph.initializer if len(t.dims) == 2 and t.dims[0] == vocab_size]
        if len(found) != 1:
            return False
        names.append(found[0])
    for graph, tensor in zip((encoder_graph, scorer_graph), names):
        move_to_own_file(graph, tensor, EMBEDDING_FILE)
    kept, twin = encoder_graph.with_name(EMBEDDING_FILE), scorer_graph.with_name(EMBEDDING_FILE)
    if not filecmp.cmp(kept, twin, shallow=False):
        return False
    twin.unlink()
    os.link(kept, twin)
    return True


@dataclass(frozen=True)
class ParityCase:
    query: str
    instruction: str | None  # None: the config's default
    documents: tuple[int, ...]  # indices into parity_documents


def parity_cases(config: RerankerConfig) -> list[ParityCase]:
    """Every parity document under a typical query; a query past the query limit and a non-default
    instruction on a few short ones (the decoder reads the query once per candidate and ratio)."""
    every = tuple(range(len(parity_documents(config.max_passage_tokens))))
    return [
        ParityCase("which documents explain how to read a file", None, every),
        ParityCase(_words(int(1.5 * config.max_query_tokens), seed=8), None, (0, 2, 3)),
        ParityCase(
            "how do I read a file",
            "Given a question about Python, retrieve the passages of its documentation.",
            (0, 2, 3),
        ),  # fmt: skip
    ]


@dataclass(frozen=True)
class RerankerParity:
    """Max |Δscore| per ratio, over every parity case: against the official semantics, `exact` with the passage states
    kept in float32 (the graphs and the pipeline), `served` with them in float16, as every served path holds them;
    and `int8`, states stored as int8 (`--passage-states int8`) against those float16 ones."""

    precision: str
    exact: dict[int, float]
    served: dict[int, float]
    int8: dict[int, float]

    def passed(self) -> bool:
        gate = PARITY_MAX_SCORE_DIFF[self.precision]
        return (max(self.exact.values()) <= gate and max(self.served.values()) <= gate + FLOAT16_STATES_MAX_SCORE_DIFF
                and max(self.int8.values()) <= INT8_STATES_MAX_SCORE_DIFF)  # fmt: skip

    def __str__(self) -> str:
        def per_ratio(diffs):
            return ", ".join(f"r={r}: {d:.2e}" for r, d in sorted(diffs.items()))

        gate = PARITY_MAX_SCORE_DIFF[self.precision]
        return (f"parity {self.precision}: max |Δscore| {per_ratio(self.exact)} (gate {gate}); served with float16 "
                f"passage states: {per_ratio(self.served)} "
                f"(gate {gate + FLOAT16_STATES_MAX_SCORE_DIFF:g}); int8 passage states against float16: "
                f"{per_ratio(self.int8)} (gate {INT8_STATES_MAX_SCORE_DIFF:g})")  # fmt: skip


def check_parity(model, tokenizer, config: RerankerConfig, encode_dir: Path, score_dir: Path,
                 precision: str) -> RerankerParity:  # fmt: skip
    """The compiled pipeline (tokenizer.json, both graphs, MEP, bucketing) against the official semantics."""
    ours = FBNLReranker.load(encode_dir, config, providers=("CPUExecutionProvider",), scorer_files=score_dir)
    documents = parity_documents(config.max_passage_tokens)
    exact = {ratio: ours.encoder.encode(documents, ratio, dtype=np.float32) for ratio in config.ratios}
    diffs = {kind: dict.fromkeys(config.ratios, 0.0) for kind in ("exact", "served", "int8")}
    for case in parity_cases(config):
        # Small batches: short passages are not padded to the longest (same scores, less work).
        expected = reference_scores(model, tokenizer, config, case.query, [documents[i] for i in case.documents],
                                    config.ratios, case.instruction, batch_size=4, full_logits=False)  # fmt: skip
        prompt = ours.tokenizer.encode_prompt(case.query, case.instruction or config.default_instruction)
        for ratio, (scores, _) in expected.items():
            passages = exact[ratio].subset(case.documents)
            served = dataclasses.replace(passages, states=passages.states.astype(STATE_DTYPE))
            for kind, held in (("exact", passages), ("served", served)):
                got = sigmoid(ours.scorer.margins(prompt, held))
                diffs[kind][ratio] = max(diffs[kind][ratio], float(np.abs(got - scores).max()))
                if kind == "served":  # int8 as a store holds it, stored at this ratio, against float16
                    stored = sigmoid(ours.scorer.margins(prompt, served.as_stored("int8")))
                    diffs["int8"][ratio] = max(diffs["int8"][ratio], float(np.abs(stored - got).max()))
    return RerankerParity(precision, diffs["exact"], diffs["served"], diffs["int8"])


def model_configs(name: str, config: RerankerConfig, max_batch_size: int) -> dict[str, mc.ModelConfig]:
    """`_encode` takes several requests per `execute` (its scheduler merges their documents). `_score` and the
    entry point take one request each (max_batch_size 1: a leading dimension of 1 on the wire, and the dynamic
    batcher's bounded queue in front of them). Every model hands its requests on at once (to its scheduler, or the
    entry point's request loop), so Triton's queues stay short; the entry point runs one instance (one process, one
    first level), which works on up to max_requests_in_flight requests at once. The tensors are the contract's."""
    params, hidden = config.to_parameters(), config.hidden_size
    return {
        f"{name}_encode": python_model_config(
            f"{name}_encode",
            encode_signature(hidden, max_batch_size),
            parameters=params,
            warmup={DOCUMENTS: WARMUP_FILE},
        ),  # fmt: skip
        f"{name}_score": python_model_config(f"{name}_score", score_signature(hidden), parameters=params),
        name: python_model_config(
            name, rerank_signature(hidden), parameters=params, max_queue_size=config.max_requests_in_flight
        ),  # fmt: skip
    }


@dataclass(frozen=True)
class RerankerExport:
    model_dirs: tuple[Path, ...]
    config: RerankerConfig
    parity: RerankerParity


def vocabulary_size(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def reranker_config(model, tokenizer, architecture: str, **fields) -> RerankerConfig:
    yes_id, no_id = answer_token_ids(tokenizer)
    hidden = model.config.decoder.hidden_size if architecture == "t5gemma2" else model.config.d_model
    if architecture == "t5":  # T5's conventions: the decoder start token, </s> on passages
        fields.update(passage_special_tokens=True, decoder_start_token_id=int(model.config.decoder_start_token_id))
    return RerankerConfig(architecture=architecture, hidden_size=int(hidden), yes_token_id=yes_id, no_token_id=no_id,
                          vocab_size=vocabulary_size(model), passage_layout=RAGGED, **templates(architecture),
                          **fields)  # fmt: skip


RERANKER_STAGES = ("loading the checkpoint", "exporting the graphs", "checking parity", "writing the models")


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
    progress=lambda stage: None,
) -> RerankerExport:
    """`checkpoint` is a directory or a Hugging Face model id. Exports, gates on parity, and only then
    writes the three model directories. `log` gets timings and the parity figures, `progress` the name of each
    stage (RERANKER_STAGES) as it starts."""
    progress(RERANKER_STAGES[0])
    checkpoint = resolve_checkpoint(checkpoint)
    model, architecture = load_checkpoint(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    extra = {}
    if ratios:
        extra["ratios"] = tuple(sorted(ratios))
        extra["default_ratio"] = 4 if 4 in ratios else min(ratios)
    config = reranker_config(model, tokenizer, architecture, max_query_tokens=max_query_tokens,
                             max_passage_tokens=max_passage_tokens, weights=precision, **extra)  # fmt: skip

    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository.parent))
    staging.chmod(0o755)
    layout = {  # model: its glue, and whether it tokenizes
        f"{name}_encode": ("rerank_encode", True),
        f"{name}_score": ("rerank_score", False),
        name: ("rerank", True),
    }
    try:
        encode_dir, score_dir = staging / f"{name}_encode" / "1", staging / f"{name}_score" / "1"
        for model_name in layout:
            (staging / model_name / "1").mkdir(parents=True)
        started = time.perf_counter()
        progress(RERANKER_STAGES[1])
        with torch.no_grad():
            export_graphs(model, config, encode_dir / ENCODER_FILE, score_dir / SCORER_FILE)
        for graph in (encode_dir / ENCODER_FILE, score_dir / SCORER_FILE):
            if precision != "fp32":
                convert_precision(graph, precision)
        shared = share_embedding(encode_dir / ENCODER_FILE, score_dir / SCORER_FILE, vocabulary_size(model))
        log(f"{name}: graphs written in {time.perf_counter() - started:.0f} s"
            f"{' (one embedding file for both)' if shared else ''}; checking parity ...")  # fmt: skip
        save_serving_tokenizer(tokenizer, encode_dir / TOKENIZER_FILE)
        config = dataclasses.replace(config, passage_fingerprint=passage_fingerprint(encode_dir, config))
        started = time.perf_counter()
        progress(RERANKER_STAGES[2])
        report = check_parity(model, tokenizer, config, encode_dir, score_dir, precision)
        log(f"{report} ({time.perf_counter() - started:.0f} s)")
        if not report.passed():
            raise ParityError(f"{name}: {report}; nothing written")

        progress(RERANKER_STAGES[3])
        configs = model_configs(name, config, max_batch_size)
        for model_name, (glue, tokenizes) in layout.items():
            version_dir = staging / model_name / "1"
            if tokenizes and version_dir != encode_dir:
                shutil.copy(encode_dir / TOKENIZER_FILE, version_dir / TOKENIZER_FILE)
            write_model(staging / model_name, configs[model_name], glue)
            if configs[model_name].model_warmup:  # the encoder runs once at load, before the model reports ready
                write_bytes_warmup(staging / model_name, WARMUP_FILE, ["nestrank warm-up passage".encode()])
        for path in staging.rglob("*"):  # some writers make private files; the server may run as another user
            path.chmod(0o755 if path.is_dir() else 0o644)
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
