"""The embedder's shared execution: jobs tokenized where they run, each failing alone, and the speed the embed
scheduler starts from measured on real work."""

import dataclasses

import numpy as np
import pytest

from nestrank.protocol.embedding import EmbedderConfig, EmbedOptions
from nestrank.protocol.errors import ValidationError
from nestrank.serving.pipeline.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(tiny_decoder_dir, tmp_path_factory) -> Embedder:
    from nestrank.export.embedder import export_embedder
    from nestrank.export.triton_config import read_config, string_parameters

    repository = tmp_path_factory.mktemp("repo")
    export_embedder(tiny_decoder_dir, "tiny", repository, log=lambda _: None)
    config = EmbedderConfig.from_parameters(string_parameters(read_config(repository / "tiny")))
    return Embedder.load(repository / "tiny" / "1", config)


def test_jobs_are_tokenized_in_the_run_and_bad_ones_fail_alone(embedder):
    options = EmbedOptions(dimensions=embedder.config.width)
    good, also_good = embedder.pre(["a first text"], options), embedder.pre(["a second text", "and a third"], options)
    too_long = embedder.pre(["lorem ipsum " * 440_000], dataclasses.replace(options, truncate=False))  # 5 MB, not cut
    assert good.sequences is None and good.tokens == embedder.estimate_tokens(["a first text"])  # tokenized in `core`
    with pytest.raises(ValidationError, match=r"text\[1\]: empty string"):  # refused before it can share a run
        embedder.pre(["fine", ""], options)
    with pytest.raises(ValidationError, match="text: no texts in the request"):
        embedder.pre([], options)
    embedder.core([good, too_long, also_good])
    assert isinstance(too_long.result, ValidationError) and "text[0]: 5280000 characters exceed" in str(too_long.result)
    assert good.result.shape == (1, embedder.config.width) and also_good.result.shape == (2, embedder.config.width)
    np.testing.assert_allclose(also_good.result, embedder.embed(["a second text", "and a third"]), atol=1e-6)


def test_the_speed_estimate_times_real_work(embedder):
    """Both runs reach the model (a regression timed a run that did nothing: ~10^8 tokens/s, so a flood of requests
    was admitted and served minutes past the queue bound)."""
    calls = []
    run = embedder.session.run
    embedder.session.run = lambda *args: calls.append(1) or run(*args)
    try:
        rate = embedder.measure_tokens_per_s()
    finally:
        del embedder.session.run
    assert len(calls) >= 2 and rate > 0
