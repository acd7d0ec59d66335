"""Stop *strings* on device, with text semantics, whatever tokenisation the model chose.

Mini-o3 ends a tool-call turn at the text `</grounding>`, which a model may emit as one token or
split across several, possibly glued to trailing characters. We compile the string into a KMP
automaton over characters, then precompute for every token id and automaton state the state after
reading that token's text: a (len(stop) + 1, vocab) table. The decode loop carries one state per
slot and stops a slot when it reaches `len(stop)`; one gather per step, no detokenising on device.

Matching runs on the decoded text with special tokens skipped, as the released engine's did, so a
special token leaves the state unchanged. Ids the tokenizer does not know (the model's padded
vocabulary) do too.
"""

from __future__ import annotations

import numpy as np

from mini_o3_jax.processing.chat import Tokenizer


def kmp_automaton(stop: str) -> tuple[np.ndarray, dict[str, int]]:
    """(m + 1, alphabet + 1) next-state table over the stop string's characters (column 0: any other)."""
    if not stop:
        raise ValueError("empty stop string")
    alphabet = {c: i + 1 for i, c in enumerate(dict.fromkeys(stop))}
    m = len(stop)
    table = np.zeros((m + 1, len(alphabet) + 1), np.int32)
    table[0, alphabet[stop[0]]] = 1
    border = 0  # state reached by the longest proper border of stop[:j]
    for j in range(1, m):
        table[j] = table[border]
        table[j, alphabet[stop[j]]] = j + 1
        border = table[border, alphabet[stop[j]]]
    table[m] = m  # matched is absorbing
    return table, alphabet


def stop_table(tokenizer: Tokenizer, stop: str, vocab_size: int) -> np.ndarray:
    """int32 (len(stop) + 1, vocab_size): state after reading token t's text from state s."""
    automaton, alphabet = kmp_automaton(stop)
    m = len(stop)
    n_tok = min(tokenizer.vocab_size, vocab_size)
    texts = tokenizer.backend.decode_batch([[i] for i in range(n_tok)], skip_special_tokens=True)
    width = max((len(t) for t in texts), default=0)
    chars = np.full((n_tok, max(width, 1)), -1, np.int32)  # -1: past the token's end, state unchanged
    for i, t in enumerate(texts):
        if t:
            chars[i, : len(t)] = [alphabet.get(c, 0) for c in t]
    out = np.broadcast_to(np.arange(m + 1, dtype=np.int32)[:, None], (m + 1, vocab_size)).copy()
    state = out[:, :n_tok].copy()
    for col in range(chars.shape[1]):
        c = chars[:, col]
        moving = c >= 0
        if not moving.any():
            break
        state[:, moving] = automaton[state[:, moving], c[moving][None, :]]
    out[:, :n_tok] = state
    return out


def truncate_at_stop(ids: np.ndarray, tokenizer: Tokenizer, stop: str) -> np.ndarray:
    """The turn's ids with nothing after the first `stop` in its text.

    When the token that completes the stop string carries more text, that token is replaced by the
    encoding of its text up to the end of the stop string.
    """
    ids = np.asarray(ids, np.int32)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    at = text.find(stop)
    if at < 0 or at + len(stop) == len(text):
        return ids
    end = at + len(stop)
    for k in range(1, len(ids) + 1):  # the first prefix whose text holds the whole stop string
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= end:
            break
    head = tokenizer.decode(ids[: k - 1], skip_special_tokens=True)
    tail = text[len(head):end]
    # the tail is model text: special-token spellings in it stay text
    return np.concatenate([ids[: k - 1], np.asarray(tokenizer.encode_plain(tail), np.int32)]).astype(np.int32)
