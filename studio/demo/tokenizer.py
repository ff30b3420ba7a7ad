"""A small CLIP tokenizer built by the project for its demo vocabulary.

    tok = build_tokenizer(["a", "red", "circle", "on", "blue", "background"])
    tok.save_pretrained("pipe/tokenizer")

The vocabulary follows CLIP's byte-level BPE layout: 256 byte symbols, the same 256 with the end-of-word
marker ``</w>``, the learned merges, then ``<|startoftext|>`` and ``<|endoftext|>``. Merges are learned by plain
BPE training on the given words, so each demo word becomes one token while any other text still tokenizes
(byte-level fallback: every byte has a symbol).
"""
from __future__ import annotations

from collections import Counter

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP reversible byte → printable unicode map, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE training over a word list until every word is a single symbol."""
    symbols = _byte_symbols()
    byte_of = {ch: symbols[ord(ch)] for ch in set("".join(words)) if ord(ch) < 256}
    seqs = []
    for word in sorted(set(w.lower() for w in words if w)):
        if any(ord(ch) >= 256 for ch in word):
            raise ValueError(f"tokenizer words must be single-byte characters; got {word!r}")
        chars = [byte_of[ch] for ch in word]
        chars[-1] += "</w>"
        seqs.append(chars)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for s in seqs for p in zip(s, s[1:]))
        if not pairs:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))  # deterministic tie-break
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i:i + 2] = [s[i] + s[i + 1]]
                i += 1


def build_tokenizer(words: list[str], *, pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIPTokenizer whose BPE covers ``words`` (one token each) with byte-level fallback."""
    if not words:
        raise ValueError("build_tokenizer: words must not be empty")
    symbols = _byte_symbols()
    merges = learn_merges(words)
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token,
                         model_max_length=MAX_LENGTH)
