"""Models to benchmark, from a Hugging Face folder, a config JSON, or a built-in name (random weights).

Sizes alone decide speed, so the paper's pair is available with no download:
    bert-base   BertModel, 12 layers, hidden 768, 12 heads, ff 3072, vocab 30522 (110M parameters)
    distilbert  DistilBertModel, 6 layers, same width, no token types, no pooler (66M parameters)
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import io
import json
from pathlib import Path
from typing import Any

from dstrain.config import UserError
from dstrain.families import family_of

# name -> (model_type, config kwargs). Defaults of BertConfig / DistilBertConfig are BERT-base's.
BUILTINS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-base": ("bert", dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)),
    "distilbert": ("distilbert", dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                                      max_position_embeddings=512)),
    "bert-large": ("bert", dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)),
}
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@dataclasses.dataclass
class ModelSpec:
    """One entry of --models, resolved to a config (the weights are loaded later, by `build`)."""

    name: str  # label in tables: the built-in name, or the folder/file name
    source: str  # what the user passed
    kind: str  # "builtin", "folder" or "config"
    config: Any  # transformers PretrainedConfig
    tokenizer_dir: str | None  # folder with a tokenizer, if any
    disk_bytes: int | None = None  # bytes of the weight files (folder) or of the safetensors they would be


def resolve_spec(source: str) -> ModelSpec:
    """Turn one --models entry into a ModelSpec, or raise UserError saying what to pass instead."""
    from transformers import AutoConfig, BertConfig, DistilBertConfig

    if source in BUILTINS:
        model_type, kw = BUILTINS[source]
        cfg = (BertConfig if model_type == "bert" else DistilBertConfig)(**kw)
        return ModelSpec(source, source, "builtin", cfg, None)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--models {source}: folder has no config.json; pass a Hugging Face model folder "
                            f"(save_pretrained output) or a config JSON file")
        try:
            cfg = AutoConfig.from_pretrained(str(path))
        except Exception as e:  # transformers raises several types for a bad config
            raise UserError(f"--models {source}: cannot read config.json ({e})") from None
        family_of(cfg, "--models", source)  # issue #16: only the families dstrain distils
        tok = str(path) if any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")) \
            else None
        return ModelSpec(path.name or source, source, "folder", cfg, tok)
    if path.is_file():
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--models {source}: not a JSON config file ({e})") from None
        if not isinstance(d, dict) or "model_type" not in d:
            raise UserError(f"--models {source}: a config JSON needs a \"model_type\" key (e.g. \"bert\"), "
                            f"as in a Hugging Face config.json")
        try:
            cfg = AutoConfig.for_model(**d)
        except Exception as e:
            raise UserError(f"--models {source}: cannot build a config from it ({e})") from None
        family_of(cfg, "--models", source)  # issue #16
        return ModelSpec(path.stem, source, "config", cfg, None)
    near = difflib.get_close_matches(source, list(BUILTINS), n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]}?" if near else ""
    looks_like_path = "/" in source or source.endswith(".json") or source.startswith(".")
    what = "no such folder or file" if looks_like_path else "not a built-in name, folder or config JSON"
    raise UserError(f"--models {source}: {what}.{hint} Pass a Hugging Face model folder, a config JSON, "
                    f"or one of the built-in names: {', '.join(BUILTINS)}")


def build(spec: ModelSpec, seed: int = 0):
    """The encoder in eval mode (AutoModel: no task head), weights from the folder or random."""
    import torch
    from transformers import AutoModel

    if spec.kind == "folder":
        try:
            model = AutoModel.from_pretrained(spec.source, dtype=torch.float32)
        except Exception as e:
            raise UserError(f"--models {spec.source}: cannot load the weights ({e})") from None
    else:
        torch.manual_seed(seed)
        model = AutoModel.from_config(spec.config, dtype=torch.float32)
    return model.eval()


def param_counts(model) -> dict[str, int]:
    """Parameters in total and without the embedding tables (word, position, token type)."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    # Embedding tables are the nn.Embedding modules; the embeddings' LayerNorm counts as a layer.
    emb = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return {"params_total": total, "params_non_embedding": total - emb, "params_embedding": emb}


def disk_bytes(spec: ModelSpec, model) -> int:
    """Bytes of the folder's weight files, or the exact size of the model.safetensors it would save."""
    if spec.kind == "folder":
        path = Path(spec.source)
        for pattern in WEIGHT_GLOBS:
            files = sorted(path.glob(pattern))
            if files:
                return sum(f.stat().st_size for f in files)
    from safetensors.torch import save

    seen, tensors = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # tied weights are stored once, as save_pretrained does
            continue
        seen.add(v.data_ptr())
        tensors[k] = v.contiguous()
    n = len(save(tensors, metadata={"format": "pt"}))
    del tensors
    gc.collect()
    return n


def serialized_bytes(model) -> int:
    """Bytes of torch.save(state_dict) (used for the int8 model, which safetensors cannot store)."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def quantize_int8(model):
    """Dynamic int8 quantisation of every nn.Linear (weights int8, activations quantised on the fly)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def weights_in_memory_bytes(model) -> int:
    """Bytes of parameters and buffers as held in memory (packed int8 weights are not counted)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", 512))


def vocab_size(config) -> int:
    return int(config.vocab_size)
