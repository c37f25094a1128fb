"""FBNL reranking in process: passages → encoder → MEP (query-independent, cacheable); prompt + pooled states →
scorer. The stages are tokenization.py (RerankTokenizer), passage_encoder.py and scorer.py; this joins them on an
exported model's files for the exporter's parity gate, the benchmarks' in-process paths and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nestrank.protocol.passages import PassageStates
from nestrank.protocol.reranking import RerankerConfig
from nestrank.serving.pipeline.passage_encoder import ENCODER_FILE, PassageEncoder
from nestrank.serving.pipeline.scorer import SCORER_FILE, Scorer
from nestrank.serving.pipeline.tokenization import TOKENIZER_FILE, RerankTokenizer


@dataclass
class FBNLReranker:
    """The in-process pipeline, on an exported model directory's files."""

    config: RerankerConfig
    tokenizer: RerankTokenizer
    encoder: PassageEncoder
    scorer: Scorer

    @classmethod
    def load(cls, files: str | Path, config: RerankerConfig, providers: tuple[str, ...] | None = None,
             scorer_files: str | Path | None = None) -> FBNLReranker:  # fmt: skip
        """From one folder holding both graphs and the tokenizer (or the scorer in `scorer_files`)."""
        files = Path(files)
        tokenizer = RerankTokenizer(files / TOKENIZER_FILE, config)
        encoder = PassageEncoder.open_session(files / ENCODER_FILE, config, providers)
        scorer_path = Path(scorer_files or files) / SCORER_FILE
        scorer = Scorer.open_session(scorer_path, config, providers)
        return cls(config, tokenizer, PassageEncoder(config, tokenizer, encoder), Scorer(config, scorer))

    @classmethod
    def from_repository(cls, repository: str | Path, name: str, config: RerankerConfig,
                        providers: tuple[str, ...] | None = None) -> FBNLReranker:  # fmt: skip
        """From an exported model repository (`<name>_encode/1`, `<name>_score/1`)."""
        repository = Path(repository)
        return cls.load(repository / f"{name}_encode" / "1", config, providers,
                        scorer_files=repository / f"{name}_score" / "1")  # fmt: skip

    def margins(self, query: str, documents: Sequence[str], ratio: int, instruction: str | None = None) -> np.ndarray:
        prompt = self.tokenizer.encode_prompt(query, instruction or self.config.default_instruction)
        return self.scorer.margins(prompt, self.encoder.encode(documents, ratio))

    # -- the rerank service's SubModels, in process (tests, benchmarks) --------------------------------------

    def encode(self, documents: list[str], ratio: int) -> PassageStates:
        return self.encoder.encode(documents, ratio)

    def score(self, prompt: np.ndarray, chunks: list[PassageStates]) -> np.ndarray:
        return np.concatenate([self.scorer.margins(prompt, chunk) for chunk in chunks])
