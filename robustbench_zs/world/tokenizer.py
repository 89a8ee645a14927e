"""A word-level tokenizer sized to the world's words (``--arch zsbench-world``).

CLIP's BPE vocabulary has 49,408 tokens; the world uses a few dozen words, so the world model's text tower embeds
only those (its weights stay a few megabytes). Ids: 0 padding, 1 an unknown word, 2 start of text, then
:data:`VOCABULARY` in order, and the end-of-text token last, so that open_clip's text tower, which pools the
position of the largest id (``text_pool = "argmax"``), pools the end of the text as CLIP does.
"""

from __future__ import annotations

import re

import torch

from .scenes import COLOURS, COUNTS, PLURALS, POSITIONS, SHAPES, SIZES, TEXTURES

#: Every word of the world's captions and prompts (:mod:`.scenes` and :mod:`.tasks`), in a fixed order: the ids of the
#: shipped model depend on it, so words are only ever appended.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *[
                "a",
                "an",
                "the",
                "this",
                "is",
                "there",
                "some",
                "of",
                "photo",
                "picture",
                "image",
                "shape",
                "shapes",
                "in",
                "at",
                "on",
                "background",
            ],
            "are",
            *["centre", "top", "bottom", "left", "right"],
            *COLOURS,
            *SHAPES,
            *PLURALS.values(),
            *SIZES,
            *COUNTS,
            *TEXTURES,
            *(w for p in POSITIONS for w in p.split()),
        ]
    )
)
PAD, UNKNOWN, START = 0, 1, 2
END = 3 + len(VOCABULARY)
VOCAB_SIZE = END + 1
#: Tokens per text, start and end included (the longest caption has 19).
CONTEXT_LENGTH = 24

_WORD = re.compile(r"[a-z]+")


class WorldTokenizer:
    """``tokenizer(texts) -> LongTensor (len(texts), context_length)``, as open_clip's tokenizers.

    Lower-cased words; anything else (punctuation, digits) separates words; a word outside :data:`VOCABULARY` becomes
    :data:`UNKNOWN` (prompts of the real datasets still tokenize, they just mean little to the world model). Texts
    longer than the context are cut, keeping the end token.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self.ids = {w: 3 + i for i, w in enumerate(VOCABULARY)}

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, UNKNOWN) for w in _WORD.findall(text.lower())]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = torch.full((len(texts), ctx), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [START, *self.encode(text)][: ctx - 1] + [END]
            out[i, : len(ids)] = torch.tensor(ids)
        return out
