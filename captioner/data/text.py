"""Reading a dataset's text files (captions, token files, split lists, JSON) so that every error
names the file and the line: bytes that are not UTF-8, JSON that does not parse or nests too deeply,
and a JSON key given twice in one object (the first value would be dropped without a word).

Python's text mode reports a decode error without a line, and `json.loads` a deep nesting as a
RecursionError; both are turned into a DatasetFormatError here. A UTF-8 byte-order mark is dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from captioner.data.records import DatasetFormatError

BOM = "\ufeff"


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, the line without its line end) for every line of a UTF-8 text file."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            line = _decode(path, raw, number).rstrip("\r\n")
            yield number, line.removeprefix(BOM) if number == 1 else line


def first_line(path: Path) -> str | None:
    """The first line that is not blank, or None."""
    return next((line for _, line in read_lines(path) if line.strip()), None)


def read_json(path: Path) -> Any:
    """The parsed JSON file; an error names the file and the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetFormatError(f"{path}:{line}: {_not_utf8(error)}") from None
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(path, pairs))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except RecursionError:
        raise DatasetFormatError(f"{path}: not valid JSON (nested too deeply)") from None


def _unique_keys(path: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """One JSON object; a key given twice is refused (json.loads would keep the last value silently)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        key = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise DatasetFormatError(f"{path}: the key {key!r} appears twice in one JSON object; keep one")
    return found


def _decode(path: Path, raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{path}:{number}: {_not_utf8(error)}") from None


def _not_utf8(error: UnicodeDecodeError) -> str:
    byte = error.object[error.start]
    return f"not UTF-8 (byte 0x{byte:02x}); save the file as UTF-8"
