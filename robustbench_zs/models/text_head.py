"""Zero-shot text heads: class prompts encoded once, averaged over templates, cached on disk.

The cache key is a hash of the text-tower weights, the class names, the templates and the tokenizer, so a head
is reused across runs, methods that share the text tower, and attacks, and never recomputed inside a loop.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..errors import temp_file, writing
from ..provenance import sha256_tensors

#: Bumped whenever the way a head is computed changes, so old cache entries are never reused.
HEAD_FORMAT = "mean-of-normalized-templates/v1"

#: How many times a head was computed (not read from the cache) in this process; tests read it.
ENCODE_CALLS = {"count": 0}


def text_weights_sha256(model: nn.Module) -> str:
    """Hash of every weight that the text embedding depends on (all but the image tower and the logit scale)."""
    named = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.") and not k.startswith("logit_")}
    return sha256_tensors(named)


def head_key(text_sha: str, classnames: list[str], templates: list[str], tokenizer_id: str) -> str:
    payload = json.dumps(
        {
            "format": HEAD_FORMAT,
            "text_weights": text_sha,
            "classnames": classnames,
            "templates": templates,
            "tokenizer": tokenizer_id,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.inference_mode()
def encode_head(
    model: nn.Module, tokenizer, classnames: list[str], templates: list[str], batch_size: int = 256
) -> torch.Tensor:
    """(C, D) L2-normalized class embeddings: each template embedding normalized, averaged, normalized again."""
    ENCODE_CALLS["count"] += 1
    device = next(model.parameters()).device
    prompts = [t.format(c) for c in classnames for t in templates]
    chunks = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[i : i + batch_size]).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    emb = torch.cat(chunks).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def _tokenizer_id(tokenizer) -> str:
    return f"{type(tokenizer).__module__}.{type(tokenizer).__name__}(context_length={getattr(tokenizer, 'context_length', None)})"


def build_text_head(
    model: nn.Module,
    tokenizer,
    classnames: list[str],
    templates: list[str],
    cache_dir: str | os.PathLike | None,
    text_sha: str | None = None,
) -> tuple[torch.Tensor, dict]:
    """Return the head on the model's device and a dict describing it (key, cache hit, counts).

    Args:
        cache_dir: folder of cached heads; None disables the cache.
        text_sha: precomputed :func:`text_weights_sha256` of ``model`` (saves re-hashing per dataset).
    """
    text_sha = text_sha or text_weights_sha256(model)
    key = head_key(text_sha, list(classnames), list(templates), _tokenizer_id(tokenizer))
    device = next(model.parameters()).device
    info = {"key": key, "num_classes": len(classnames), "num_templates": len(templates), "cache_hit": False}
    path = Path(cache_dir) / "text_heads" / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored_key = (f.metadata() or {}).get("key")
            head = load_file(str(path))["head"]
            if stored_key == key and head.shape[0] == len(classnames) and torch.isfinite(head).all():
                info["cache_hit"] = True
                return head.to(device), info
        except Exception:  # a corrupt cache entry is recomputed and overwritten
            pass
    head = encode_head(model, tokenizer, list(classnames), list(templates))
    if path is not None:
        _write_head(path, head, key)
    return head, info


#: what to do when the text-head cache cannot be written
CACHE_HINT = "set ZSBENCH_CACHE to another folder"


def _write_head(path: Path, head: torch.Tensor, key: str) -> None:
    """Store a head atomically: a temporary file beside ``path``, fsync, then rename; the temporary never stays.

    The safetensors bytes are built in memory (a head is small) and written with plain file I/O, so a full,
    read-only or forbidden cache folder is an OSError, turned into a one-line :class:`ZSBenchError`.
    """
    data = save({"head": head.detach().cpu().contiguous()}, metadata={"key": key})
    with writing(path, instead=CACHE_HINT):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path.parent, prefix=f".{path.stem}.{os.getpid()}.")
        with writing(path, instead=CACHE_HINT, cleanup=(tmp,)):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
