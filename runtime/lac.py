"""LAC word segmentation around a Paddle predictor: text -> char ids (q2b, OOV) -> tags -> words.

Sits between the protocol handlers (strings in, strings out) and the Paddle backend (int64 LoD tensor).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def lac_dir() -> Path:
    """The installed `lac` package's directory, found without importing its (paddle 1.x) code."""
    spec = importlib.util.find_spec("LAC")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `lac` package is not installed (pip install --no-build-isolation lac==2.1.2)")
    return Path(list(spec.submodule_search_locations)[0])


def _read_dict(path: Path) -> list[tuple[str, str]]:
    """The `key<TAB>value` lines of a LAC dictionary; other lines are skipped."""
    rows = (line.split("\t") for line in path.read_text(encoding="utf-8").split("\n"))
    return [(r[0], r[1]) for r in rows if len(r) == 2]


class LacSegmenter:
    """Turns sentences into LAC's input and its B/I/E/S tags back into words."""

    def __init__(self, model_dir: Path, separator: str = "|") -> None:
        conf = model_dir.parent / "conf"
        self.word2id = {w: int(i) for i, w in _read_dict(conf / "word.dic")}
        self.oov = self.word2id["OOV"]
        self.q2b = dict(_read_dict(conf / "q2b.dic"))
        self.id2tag = {int(i): t for i, t in _read_dict(conf / "tag.dic")}
        self.separator = separator

    def encode(self, sentences: list[str]) -> tuple[np.ndarray, list[int]]:
        """int64 ids `[sum(len), 1]` and LoD offsets `[0, n1, n1+n2, ...]` for a batch."""
        ids: list[int] = []
        lod = [0]
        for s in sentences:
            ids.extend(self.word2id.get(self.q2b.get(ch, ch), self.oov) for ch in s)
            lod.append(len(ids))
        return np.asarray(ids, dtype=np.int64).reshape(-1, 1), lod

    def decode(self, sentence: str, tags: np.ndarray) -> list[str]:
        """B/I/E/S tags to words: B and S start a word, E and S end one."""
        words: list[str] = []
        cur = ""
        for ch, tag_id in zip(sentence, tags.reshape(-1).tolist(), strict=False):
            tag = self.id2tag.get(int(tag_id), "-S")[-1]
            if tag in "BS" and cur:
                words.append(cur)
                cur = ""
            cur += ch
            if tag in "ES":
                words.append(cur)
                cur = ""
        if cur:
            words.append(cur)
        return words

    def join(self, words: list[str]) -> str:
        return self.separator.join(words)


def predict_tags(predictor, ids: np.ndarray, lod: list[int]) -> np.ndarray:
    """One run of LAC's Paddle predictor: char ids with their LoD offsets in, tag ids out (blocking;
    the caller owns the predictor's thread)."""
    h = predictor.get_input_handle(predictor.get_input_names()[0])
    h.reshape(list(ids.shape))
    h.copy_from_cpu(ids)
    h.set_lod([lod])
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
