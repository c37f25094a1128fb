"""The served copy of a repository: overrides land in the config parameters of the models they apply to (and the
queue policy follows max_queue_wait_s), everything else is a link, the exported repository is untouched, bad
overrides are refused naming the model and the field, and a store's password never reaches a config."""

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.export.triton_config import python_model_config, read_config, string_parameters, write_config
from nestrank.protocol.embedding import EmbedderConfig, embed_signature
from nestrank.protocol.reranking import (
    STORE_PASSWORD_VARIABLE,
    encode_signature,
    rerank_signature,
    score_signature,
)
from nestrank.serving.launcher import cli as serving_cli
from nestrank.serving.launcher.config import ServerConfig
from nestrank.serving.launcher.served import Override, served_repository, split_password
from nestrank.serving.pipeline.passage_store import configured_store, default_passage_store
from tests.names import reranker_config

EMBEDDER = EmbedderConfig(width=8, max_length=16, pooling="mean")
RERANKER = reranker_config()


def write(repo, name, signature, config):
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text("# the stub\n")
    write_config(python_model_config(name, signature, parameters=config.to_parameters()), repo / name)


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    write(repo, "minilm", embed_signature(16), EMBEDDER)
    for name, signature in (("k_encode", encode_signature(8, 64)), ("k_score", score_signature(8)),
                            ("k", rerank_signature(8))):  # fmt: skip
        write(repo, name, signature, RERANKER)
    (repo / "other").mkdir()  # not a nestrank model: left alone
    (repo / "other" / "config.pbtxt").write_text(text_format.MessageToString(mc.ModelConfig(name="other")))
    return repo


def parameters(model_dir):
    return {k: json.loads(v) for k, v in string_parameters(read_config(model_dir)).items()}


def queue_wait_us(model_dir):
    return read_config(model_dir).dynamic_batching.default_queue_policy.default_timeout_microseconds


def test_overrides_land_in_the_served_configs_and_nowhere_else(repo, tmp_path):
    exported = {p: p.read_bytes() for p in repo.rglob("config.pbtxt")}
    overrides = [
        Override.limit("max_queue_wait_s=5"),
        Override.limit("k:passage_cache_bytes=2GiB"),
        Override.limit("max_run_tokens=4096"),
        Override.passage_store("redis://:s3cret@r:6379/0?states=int8"),
    ]
    served = served_repository(repo, tmp_path / "served", overrides)
    assert parameters(served / "minilm")["max_queue_wait_s"] == 5 and queue_wait_us(served / "minilm") == 5_000_000
    assert parameters(served / "minilm")["max_run_tokens"] == 4096
    for name in ("k", "k_encode", "k_score"):
        assert parameters(served / name)["max_queue_wait_s"] == 5 and queue_wait_us(served / name) == 5_000_000
        assert parameters(served / name)["passage_cache_bytes"] == 2 << 30  # k and its sub-models
        assert parameters(served / name)["passage_store"] == "redis://:***@r:6379/0?states=int8"
        assert (served / name / "1").resolve() == (repo / name / "1").resolve()  # the exported files, linked
    assert "passage_store" not in parameters(served / "minilm")  # an embedder has no store
    assert (served / "other").is_symlink() and (served / "other").resolve() == (repo / "other").resolve()
    assert {p: p.read_bytes() for p in repo.rglob("config.pbtxt")} == exported  # the export is as it was
    assert all("s3cret" not in p.read_text() for p in served.rglob("config.pbtxt"))


def test_the_target_is_one_model_family_when_named(repo, tmp_path):
    served = served_repository(repo, tmp_path / "served", [Override.limit("minilm:max_queue_wait_s=2")])
    assert queue_wait_us(served / "minilm") == 2_000_000 and queue_wait_us(served / "k") == 30_000_000
    assert (served / "k").is_symlink()
    assert served_repository(repo, tmp_path / "unchanged", [Override.passage_store("memory://")]) != repo
    nothing = tmp_path / "none"
    (nothing / "other").mkdir(parents=True)
    assert served_repository(nothing, tmp_path / "x", [Override.passage_store("memory://")]) == nothing


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_run_tokens=8", "minilm: max_run_tokens must be >= max_length 16, got 8"),
        ("max_candidates=0", "k: max_candidates must be >= 1, got 0"),
        ("nobody:max_candidates=5", "--limit nobody:max_candidates=5: no model 'nobody'"),
        ("minilm:max_candidates=5", "--limit minilm:max_candidates=5: no model 'minilm' .* has max_candidates"),
    ],
)
def test_bad_overrides_are_refused_naming_the_model_and_the_field(repo, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        served_repository(repo, tmp_path / "served", [Override.limit(override)])
    assert not (tmp_path / "served").exists()


def test_a_store_password_travels_outside_the_config():
    url = "rediss://user:p%40ss@r:6380/1?timeout_s=0.5&states=int8"
    shown, password = split_password(url)
    assert shown == "rediss://user:***@r:6380/1?timeout_s=0.5&states=int8" and password == "p%40ss"
    assert split_password("lmdb:///var/lib/x?map_size=1GiB&states=int8") == (
        "lmdb:///var/lib/x?map_size=1GiB&states=int8", None)  # fmt: skip
    assert configured_store(shown) == shown  # no password given: as configured (and Redis refuses it, visibly)


def test_the_model_reads_the_password_and_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv(STORE_PASSWORD_VARIABLE, "p%40ss")
    assert configured_store("redis://:***@r:6379/0?states=int8") == "redis://:p%40ss@r:6379/0?states=int8"
    assert configured_store("redis://r:6379/0") == "redis://r:6379/0"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert configured_store("") == default_passage_store() == f"lmdb://{tmp_path}/nestrank/passages"


def test_the_flag_is_parsed_and_checked_before_anything_starts(repo, capsys):
    args = serving_cli.parser().parse_args(["--repository", str(repo), "--limit", "max_candidates=200",
                                            "--limit", "k:passage_cache_bytes=1GiB"])  # fmt: skip
    assert [str(o) for o in args.limit] == ["max_candidates=200", "k:passage_cache_bytes=1073741824"]
    with pytest.raises(SystemExit):
        serving_cli.parser().parse_args(["--limit", "max_candidates=lots"])
    assert "max_candidates: 'lots' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serving_cli.parser().parse_args(["--limit", "max_candidate=1"])
    assert "unknown limit 'max_candidate'" in capsys.readouterr().err
    args = serving_cli.parser().parse_args(["--repository", str(repo), "--limit", "minilm:max_candidates=5"])
    assert serving_cli.run(args) == 2 and "no model 'minilm'" in capsys.readouterr().err


def test_the_server_config_carries_overrides_and_tests_get_a_store_of_their_own(tmp_path):
    config = ServerConfig.on_free_ports(tmp_path, overrides=[Override.limit("max_candidates=3")])
    assert config.overrides == (Override.limit("max_candidates=3"),) and config.passage_store == "memory://"
    assert ServerConfig(tmp_path).passage_store is None  # as exported: the default store
    assert "s3cret" not in repr(ServerConfig(tmp_path, passage_store="redis://:s3cret@r:6379/0"))
    with pytest.raises(ValueError, match="cannot be set at serve time"):
        Override("width", "8")


def test_the_launcher_serves_the_copy_and_hands_the_password_to_the_models_alone(repo):
    from nestrank.serving.launcher.flags import triton_command
    from nestrank.serving.launcher.server import ServerStartError, TritonServer

    config = ServerConfig(repo, overrides=(Override.limit("max_candidates=3"),), passage_store="redis://:pw1@r:1/0")
    server = TritonServer(config)
    server.prepare()
    try:
        served = server._repository
        assert served != repo and parameters(served / "k")["max_candidates"] == 3
        assert server._env[STORE_PASSWORD_VARIABLE] == "pw1"
        command = triton_command(config, server._install, None, "nestrank_1_ab_", served)
        assert f"--model-repository={served}" in command
    finally:
        server.stop()
    assert not served.exists()  # the copy lives and goes with the launcher's work directory
    with pytest.raises(ServerStartError, match="cannot serve with these settings: k: max_candidates must be >= 1"):
        TritonServer(ServerConfig(repo, overrides=(Override.limit("max_candidates=0"),))).prepare()
    plain = TritonServer(ServerConfig(repo))
    plain.prepare()
    plain.stop()
    assert plain._repository == repo.resolve()  # nothing to change: the export itself


def instances(model_dir):
    return sum(group.count for group in read_config(model_dir).instance_group)


def test_a_store_in_one_process_memory_serves_the_rerank_model_with_one_instance(repo, tmp_path):
    """Two rerank instances are two processes: with memory://, what one warmed the other would not find."""
    config = read_config(repo / "k")
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)  # as the export writes it
    (repo / "k" / "config.pbtxt").write_text(text_format.MessageToString(config))
    one = served_repository(repo, tmp_path / "memory", [Override.passage_store("memory://")])
    assert instances(one / "k") == 1 and instances(one / "k_encode") == instances(repo / "k_encode")
    shared = served_repository(repo, tmp_path / "lmdb", [Override.passage_store(f"lmdb://{tmp_path / 'db'}")])
    assert instances(shared / "k") == 2
