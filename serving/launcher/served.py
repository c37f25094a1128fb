"""The served copy of a model repository: what is set at serve time (limits, the passage store) goes into the config
parameters of the models it applies to, in a copy of their `config.pbtxt` beside links to everything else.

Why a copy of the config, and not environment variables read inside the models: the exported repository stays as
exported (it may be read-only, or shared by several servers), and what is in force is where Triton keeps a model's
config, so its model-config endpoint, the clients' `info()` and the HTTP front's /info show it. Every model reads its
limits one way, from its config, whoever started the server. Configs are parsed and written with model_config_pb2.

An override names a field of the model's config (protocol/limits.py's limits, or `passage_store`) and applies to
every model whose config has it, or to one model and its sub-models (`MODEL:NAME=VALUE`: a reranker NAME and its
NAME_encode and NAME_score). Each changed config is validated as the model will read it, before anything starts.
`max_queue_wait_s` is Triton's queue policy too, so both change together.

A `memory://` passage store lives in one process, so a rerank model configured with several instances (processes)
is served with one on it: a passage one instance warms is then found by every later request.

A store URL's password never goes into a config (clients may read configs): the parameter keeps `:***@`, and the
password travels to the models in the environment (STORE_PASSWORD_VARIABLE), like every other secret.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from nestrank.protocol.embedding import EmbedderConfig
from nestrank.protocol.limits import LIMIT_NAMES, parse_limit
from nestrank.protocol.parameters import string_parameters
from nestrank.protocol.reranking import QUERY, RerankerConfig

CONFIG_FILE = "config.pbtxt"
KINDS = (EmbedderConfig, RerankerConfig)
SUB_MODELS = ("_encode", "_score")
PASSAGE_STORE = "passage_store"
_OVERRIDE = re.compile(r"(?:(?P<model>[A-Za-z0-9_.-]+):)?(?P<name>[a-z_]+)=(?P<value>.*)", re.DOTALL)


@dataclass(frozen=True)
class Override:
    """One config parameter set at serve time: `value` is the parameter's JSON; `model` None means every model
    whose config has `name`. `required`: refuse to start when no served model has it (a typo)."""

    name: str
    value: str
    model: str | None = None
    required: bool = True

    def __post_init__(self):
        if self.name not in (*LIMIT_NAMES, PASSAGE_STORE):
            raise ValueError(f"{self.name!r} cannot be set at serve time; limits: {', '.join(LIMIT_NAMES)}")
        json.loads(self.value)  # JSON, as every config parameter is

    @classmethod
    def limit(cls, text: str) -> Override:
        """`[MODEL:]NAME=VALUE` (the --limit flag) → an Override; ValueError saying what is wrong."""
        match = _OVERRIDE.fullmatch(text.strip())
        if not match:
            raise ValueError(f"{text!r}: expected [MODEL:]NAME=VALUE, e.g. max_candidates=200")
        return cls(match["name"], parse_limit(match["name"], match["value"]), match["model"])

    @classmethod
    def passage_store(cls, url: str) -> Override:
        """The store every reranker uses (none served: nothing to do); its password is kept out (see the top)."""
        return cls(PASSAGE_STORE, json.dumps(split_password(url)[0]), required=False)

    def applies_to(self, model: str) -> bool:
        return self.model is None or model == self.model or model in (self.model + s for s in SUB_MODELS)

    def __str__(self) -> str:
        return f"{self.model + ':' if self.model else ''}{self.name}={self.value}"


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL with its password as ***, the password); a URL without one comes back as it is, untouched."""
    parts = urlsplit(url)
    if not parts.password:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc)), parts.password


def config_kind(parameters: dict[str, str]) -> type | None:
    """The nestrank config a model's parameters hold (its required fields are all there); None for other models."""
    for kind in KINDS:
        required = [f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING and f.init]
        if all(name in parameters for name in required):
            return kind
    return None


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / CONFIG_FILE).read_text(encoding="utf-8"), mc.ModelConfig())


def changed_configs(repository: Path, overrides: Sequence[Override]) -> dict[str, mc.ModelConfig]:
    """{model: its config with the overrides that apply to it}, each validated as its model will read it; a
    ValueError names the model and the field, or the override no served model has."""
    changed, used = {}, set()
    for model_dir in sorted(p for p in repository.iterdir() if (p / CONFIG_FILE).is_file()):
        config = read_config(model_dir)
        kind = config_kind(_parameters(config))
        if kind is None:
            continue
        fields = {f.name for f in dataclasses.fields(kind)}
        mine = [o for o in overrides if o.name in fields and o.applies_to(model_dir.name)]
        for override in mine:
            config.parameters[override.name].string_value = override.value
            used.add(override)
        try:
            served = kind.from_parameters(_parameters(config))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{model_dir.name}: {err}") from None
        one_process = _one_process_store(config, served)
        if not (mine or one_process):
            continue
        if one_process:  # memory:// is one process's: every request must reach that one
            del config.instance_group[1:]
            config.instance_group[0].count = 1
        if config.HasField("dynamic_batching"):  # the queue's bound is the model's max_queue_wait_s
            queue = config.dynamic_batching.default_queue_policy
            queue.default_timeout_microseconds = int(served.max_queue_wait_s * 1e6)
        if "max_requests_in_flight" in {o.name for o in mine} and any(t.name == QUERY for t in config.input):
            # the rerank entry point: requests it holds at once, in work and in Triton's queue (written at export)
            config.dynamic_batching.default_queue_policy.max_queue_size = served.max_requests_in_flight
        changed[model_dir.name] = config
    for override in overrides:
        if override.required and override not in used:
            where = f"model {override.model!r} (or it is not a nestrank model)" if override.model else "served model"
            raise ValueError(f"--limit {override}: no {where} has {override.name}")
    return changed


def _one_process_store(config: mc.ModelConfig, served) -> bool:
    """A rerank entry point of several instances (processes) whose passage store lives in one process's memory:
    what one instance warms, another would not find."""
    entry_point = isinstance(served, RerankerConfig) and any(t.name == QUERY for t in config.input)
    instances = sum(group.count or 1 for group in config.instance_group)
    return entry_point and instances > 1 and urlsplit(served.passage_store).scheme.lower() == "memory"


def served_repository(repository: Path, target: Path, overrides: Sequence[Override]) -> Path:
    """`target`: `repository` with the overrides in force. Changed models get their own directory holding the new
    config.pbtxt and links to the rest (version directories, warm-up data); every other entry is a link. Nothing
    changed: `repository` itself."""
    changed = changed_configs(repository, overrides)
    if not changed:
        return repository
    target.mkdir(parents=True)
    for entry in sorted(repository.iterdir()):
        if entry.name not in changed:
            (target / entry.name).symlink_to(entry.resolve())
            continue
        model_dir = target / entry.name
        model_dir.mkdir()
        for part in entry.iterdir():
            if part.name != CONFIG_FILE:
                (model_dir / part.name).symlink_to(part.resolve())
        (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(changed[entry.name]), encoding="utf-8")
    return target


def _parameters(config: mc.ModelConfig) -> dict[str, str]:
    return string_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True))
