"""Text calibration data: a ``.jsonl`` file (a "text" field per line) or a ``.txt`` file (one
document per line), tokenized with a Hugging Face tokenizer into ``input_ids`` and
``attention_mask``.

Each document is one sample, cut to ``max_length`` tokens; a batch is padded to its longest
document, and ``attention_mask`` marks the real tokens (the observers never see the padding,
``core.observers``). ``pack`` concatenates the documents' tokens instead and cuts them into rows
of exactly ``max_length`` tokens (only the last row is shorter), so nothing is cut off and
almost nothing is padded.

The files are untrusted: read within a size limit, decoded as UTF-8, every malformed line a
DataError naming its line. A tokenizer folder is data too (``tokenizer.json``, vocabularies):
it loads with ``local_files_only=True`` and never with remote code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reludoctor import safeio
from reludoctor.data.binding import MASK_INPUT
from reludoctor.errors import DataError, UsageError, first_line

SUFFIXES = (".jsonl", ".txt")
TEXT_FIELD = "text"
MAX_TEXT_BYTES = 1 << 30  # a text calibration file is read whole (1 GiB)
IDS_INPUT = "input_ids"


def is_text_file(path: Any) -> bool:
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in SUFFIXES


def read_documents(path: Path) -> list[str]:
    """The documents of a ``.jsonl`` or ``.txt`` file (blank lines skipped)."""
    data = safeio.read_limited(path, MAX_TEXT_BYTES, "text data", DataError)
    safeio.note_read(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from None
    lines = text.splitlines()
    if path.suffix.lower() == ".txt":
        documents = [line for line in lines if line.strip()]
    else:
        documents = [_jsonl_text(line, number, path) for number, line in enumerate(lines, 1)
                     if line.strip()]
    if not documents:
        raise DataError(f"{path}: no documents", "the text data is empty")
    return documents


def _jsonl_text(line: str, number: int, path: Path) -> str:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}:{number}: not a JSON object ({first_line(exc)})",
                        'one JSON object per line, e.g. {"text": "..."}') from None
    if not isinstance(record, dict) or TEXT_FIELD not in record:
        raise DataError(f"{path}:{number}: no \"{TEXT_FIELD}\" field",
                        'one JSON object per line, e.g. {"text": "..."}')
    value = record[TEXT_FIELD]
    if not isinstance(value, str):
        raise DataError(f"{path}:{number}: \"{TEXT_FIELD}\" is a {type(value).__name__}, not a string")
    return value


def load_tokenizer(folder: Any) -> Any:
    """A tokenizer from a local folder (never downloaded, never remote code), with a padding
    token (the end-of-text token when it has none, as for Llama)."""
    if folder is None:
        raise UsageError("text data needs a tokenizer", "pass --tokenizer FOLDER (a Hugging Face "
                         "tokenizer: tokenizer.json, tokenizer_config.json)")
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"--tokenizer {path}: no such folder", "pass the folder holding tokenizer.json")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise DataError("text data needs the transformers package", "pip install transformers") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # missing or malformed files fail in many ways inside transformers
        raise DataError(f"--tokenizer {path}: cannot load a tokenizer ({type(exc).__name__}: "
                        f"{first_line(exc)[:200]})",
                        "pass a folder with tokenizer.json (or the files of a slow tokenizer)") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise DataError(f"--tokenizer {path}: the tokenizer has no padding or end-of-text token",
                            "use --pack (no padding), or a tokenizer with a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class TextCorpus:
    """Tokenized samples (one document each, or packed rows): ``read(rows)`` pads the chosen
    ones to the longest of them and returns {input_ids, attention_mask} arrays."""

    samples: list[np.ndarray]  # int64 token ids, one array per sample
    pad_id: int
    left: bool  # the tokenizer pads on the left
    describe: str  # how the samples were made, for the report's calibration source
    truncated: int = 0  # documents cut to max_length
    packed: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, rows: Any) -> dict[str, np.ndarray]:
        chosen = [self.samples[int(i)] for i in np.arange(len(self.samples))[rows]]
        width = max(len(ids) for ids in chosen)
        ids = np.full((len(chosen), width), self.pad_id, np.int64)
        mask = np.zeros((len(chosen), width), np.int64)
        for row, tokens in enumerate(chosen):
            where = slice(width - len(tokens), width) if self.left else slice(0, len(tokens))
            ids[row, where], mask[row, where] = tokens, 1
        return {IDS_INPUT: ids, MASK_INPUT: mask}


def tokenize(path: Path, tokenizer: Any, max_length: int, pack: bool) -> TextCorpus:
    """A text file -> its samples (documents, or packed rows of ``max_length`` tokens)."""
    if max_length < 1:
        raise UsageError(f"--max-length {max_length} must be at least 1")
    documents = read_documents(path)
    try:
        encoded = tokenizer(documents, add_special_tokens=True)["input_ids"]
    except Exception as exc:  # a tokenizer that fails on this text
        raise DataError(f"{path}: the tokenizer failed ({type(exc).__name__}: {first_line(exc)[:200]})") from None
    tokens = [np.asarray(ids, np.int64) for ids in encoded]
    pad_id = int(tokenizer.pad_token_id)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    if pack:
        stream = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
        rows = [stream[start:start + max_length] for start in range(0, stream.size, max_length)]
        if not rows:
            raise DataError(f"{path}: no tokens", "the text data is empty")
        return TextCorpus(rows, pad_id, left, f"{len(documents)} documents packed into {len(rows)} rows "
                          f"of {max_length} tokens", packed=True)
    empty = sum(1 for ids in tokens if ids.size == 0)
    if empty == len(tokens):
        raise DataError(f"{path}: no tokens", "the text data is empty")
    truncated = sum(1 for ids in tokens if ids.size > max_length)
    samples = [ids[:max_length] for ids in tokens if ids.size]
    return TextCorpus(samples, pad_id, left, f"{len(samples)} documents, max length {max_length}",
                      truncated)


def check_inputs(names: Sequence[str], corpus: TextCorpus, source: str) -> None:
    """A padded batch needs the model to take the mask (else it would attend to the padding);
    without one, packed rows drop their shorter last row."""
    if IDS_INPUT not in names:
        raise DataError(f"{source}: the model has no input '{IDS_INPUT}' for the tokens",
                        "scan a language model taking input_ids")
    if MASK_INPUT in names:
        return
    if corpus.packed and len(corpus.samples) > 1 and len(corpus.samples[-1]) < len(corpus.samples[0]):
        corpus.samples.pop()  # the shorter last row would need padding nothing masks
    if len({len(ids) for ids in corpus.samples}) > 1:
        raise DataError(f"{source}: the model takes no '{MASK_INPUT}', so padded batches would be "
                        "observed as real tokens", "pass --pack (rows of --max-length tokens)")
