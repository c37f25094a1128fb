"""Texts that need no download: the parity set, and a realistic mix for calibration and benchmarks.

The mix is built from the English docstrings of Python's standard library, cut to lengths drawn
from a log-normal fitted to real retrieval traffic (median ~32 tokens, p90 ~250; DESIGN.md).
"""

from __future__ import annotations

import inspect
import re

import numpy as np

PARITY_TEXTS = (
    "A man is eating food.",
    "hi",
    " ",
    ".",
    "naïve café — déjà vu, Straße, 東京タワーは高い。 Привет, мир! 🙂",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Retrieval-augmented generation combines a retriever with a generator so that answers cite sources. " * 40,
    "def f(x):\n    return x ** 2  # code, tabs\tand newlines",
    "1234567890 !@#$%^&*()",
)

_MODULES = (
    "builtins",
    "os",
    "json",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "re",
    "string",
    "threading",
    "subprocess",
    "argparse",
    "logging",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "textwrap",
    "unittest",
    "typing",
    "asyncio",
    "socket",
    "email",
    "http.client",
    "urllib.parse",
    "csv",
    "sqlite3",
    "zipfile",
    "tarfile",
    "shutil",
    "tempfile",
    "heapq",
    "bisect",
    "random",
)


def _docstring_sentences() -> list[str]:
    import importlib
    import warnings

    sentences: list[str] = []
    for name in _MODULES:
        try:
            with warnings.catch_warnings():  # typing's deprecated io/re aliases warn on access
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(name)
                members = sorted(vars(module).items())
        except ImportError:
            continue
        for _, obj in members:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if not doc:
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if len(sentence.split()) >= 4:
                    sentences.append(sentence)
    return sorted(set(sentences))


def long_texts(count: int, seed: int = 0, words: int = 400) -> list[str]:
    """`count` texts of `words` words each (about 500 MiniLM tokens: past a 256-token limit, like man pages)."""
    rng = np.random.default_rng(seed)
    pool = " ".join(_docstring_sentences()).split()
    return [" ".join(pool[s : s + words]) for s in rng.integers(0, len(pool) - words, size=count)]


def realistic_texts(count: int, seed: int = 0, median_words: float = 19.0, sigma: float = 1.6) -> list[str]:
    """`count` texts whose word counts follow a log-normal (defaults: median ≈ 32 MiniLM tokens, p90 ≈ 250)."""
    rng = np.random.default_rng(seed)
    words = " ".join(_docstring_sentences()).split()
    lengths = np.clip(rng.lognormal(np.log(median_words), sigma, size=count).astype(int), 1, 1500)
    starts = rng.integers(0, len(words) - 1600, size=count)
    return [" ".join(words[s : s + n]) for s, n in zip(starts, lengths)]
