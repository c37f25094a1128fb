"""Reads what an embedder checkpoint directory says about itself (Hugging Face / sentence-transformers layout)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# What a checkpoint download needs: config, weights, tokenizer (not the training code or images).
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]

POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class EmbedderCheckpoint:
    root: Path
    transformer_dir: Path
    pooling: str
    normalize: bool
    max_length: int
    width: int
    prompts: tuple[tuple[str, str], ...]
    default_prompt: str | None
    matryoshka_dims: tuple[int, ...]

    @property
    def tokenizer_json(self) -> Path:
        for folder in (self.transformer_dir, self.root):
            if (folder / "tokenizer.json").exists():
                return folder / "tokenizer.json"
        raise FileNotFoundError(f"no tokenizer.json in {self.transformer_dir} or {self.root}")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def read_checkpoint(root: str | Path, pooling: str | None = None) -> EmbedderCheckpoint:
    """Pooling, normalisation, prompts and limits from `modules.json` and friends.

    A bare Hugging Face checkpoint (no modules.json) needs `pooling` from the caller.
    """
    root = Path(root)
    if not (root / "config.json").exists() and not (root / "modules.json").exists():
        raise FileNotFoundError(f"{root} holds neither config.json nor modules.json")
    modules = _read_json(root / "modules.json") or []
    by_type = {m["type"].rsplit(".", 1)[-1]: root / m.get("path", "") for m in modules}
    transformer_dir = by_type.get("Transformer", root)
    hf_config = _read_json(transformer_dir / "config.json")

    pool_cfg = _read_json(by_type["Pooling"] / "config.json") if "Pooling" in by_type else {}
    # sentence-transformers >= 6 writes "pooling_mode": "<mode>"; older versions one boolean per mode.
    found = [pool_cfg["pooling_mode"]] if "pooling_mode" in pool_cfg else []
    found += [mode for key, mode in POOLING_KEYS.items() if pool_cfg.get(key)]
    if pooling is None:
        if len(found) != 1 or found[0] not in POOLING_KEYS.values():
            raise ValueError(f"{root}: cannot serve pooling {found or 'none'}; pass --pooling mean|cls|lasttoken")
        pooling = found[0]

    st_config = _read_json(transformer_dir / "sentence_bert_config.json") or _read_json(
        root / "sentence_bert_config.json"
    )
    tokenizer_config = _read_json(transformer_dir / "tokenizer_config.json")
    max_length = (
        st_config.get("max_seq_length")
        or tokenizer_config.get("model_max_length")  # where sentence-transformers >= 6 keeps it
        or hf_config.get("max_position_embeddings")
        or 512
    )
    max_length = min(int(max_length), int(hf_config.get("max_position_embeddings") or max_length))
    width = (
        pool_cfg.get("embedding_dimension") or pool_cfg.get("word_embedding_dimension") or hf_config.get("hidden_size")
    )
    if not width:
        raise ValueError(f"{root}: no hidden_size in config.json")

    st_meta = _read_json(root / "config_sentence_transformers.json")
    prompts = tuple(sorted((st_meta.get("prompts") or {}).items()))
    # Matryoshka dims a model card may declare (e.g. {"matryoshka_dims": [768, 512, ...]}).
    dims = tuple(st_meta.get("matryoshka_dims") or hf_config.get("matryoshka_dimensions") or ())
    return EmbedderCheckpoint(
        root=root,
        transformer_dir=transformer_dir,
        pooling=pooling,
        normalize="Normalize" in by_type,
        max_length=int(max_length),
        width=int(width),
        prompts=prompts,
        default_prompt=st_meta.get("default_prompt_name"),
        matryoshka_dims=tuple(int(d) for d in dims),
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_checkpoint(spec: str | Path) -> Path:
    """A local checkpoint directory as it is; anything else is a Hugging Face model id (e.g.
    `KaLM-Embedding/KaLM-Reranker-V1-Nano`), taken from the local cache or, with a network, downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(spec).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{spec}: not a checkpoint directory")
    cache = os.environ.get("HF_HUB_CACHE") or None  # read now, so that a caller's setting counts
    try:
        return Path(snapshot_download(str(spec), cache_dir=cache, local_files_only=True))
    except HFValidationError as err:
        raise FileNotFoundError(f"{spec}: neither a directory nor a Hugging Face model id ({err})") from None
    except LocalEntryNotFoundError:
        pass
    where = cache or "the Hugging Face cache (HF_HUB_CACHE / HF_HOME)"
    if _offline():
        raise FileNotFoundError(
            f"{spec}: not in {where}, and HF_HUB_OFFLINE is set; download it first "
            f"(`hf download {spec}`) or pass the checkpoint directory"
        )
    try:
        return Path(snapshot_download(str(spec), cache_dir=cache, allow_patterns=CHECKPOINT_FILES))
    except Exception as err:  # no network, gated, unknown id: say which and how to fix it
        raise FileNotFoundError(
            f"{spec}: not in {where}, and downloading it failed ({type(err).__name__}: {err}); "
            "pass the checkpoint directory instead"
        ) from None
