"""Where the caption command's results go: one record per image on stdout in one of three formats
(text, jsonl, csv), and with `--attention-maps DIR` one PNG per image. A file name never forges a
record, and a write that fails is an `OutputError` (the command's exit 4), one line.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from captioner.decoding import Generation
from captioner.model import Captioner

FORMATS = ("text", "jsonl", "csv")


class Refusal(Exception):
    """The command cannot start (exit 2); the message is one line."""


class OutputError(Exception):
    """The captions or the attention maps could not be written (exit 4); the message is one line."""


@dataclass
class Captioned:
    """One image's result: its alternatives best first (rank 0 is the caption)."""

    file: str  # the path as found from the command line
    captions: list[str]
    log_probs: list[float]
    finished: list[bool]


class Writer:
    """Writes results to `stream` in one of FORMATS, flushed per image so a pipe sees them at once."""

    def __init__(self, stream: TextIO, format_name: str) -> None:
        self.stream, self.format_name = stream, format_name
        self.csv = csv.writer(stream, lineterminator="\n") if format_name == "csv" else None
        if self.csv is not None:
            self.csv.writerow(["file", "caption", "log_prob"])

    def write(self, result: Captioned) -> None:
        """One record; a closed pipe raises BrokenPipeError, any other failed write an OutputError."""
        try:
            self._write(result)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise OutputError(f"cannot write the captions to stdout ({error.strerror or error})") from None

    def _write(self, result: Captioned) -> None:
        if self.format_name == "jsonl":
            alternatives = [{"caption": caption, "log_prob": round(log_prob, 4), "finished": finished}
                            for caption, log_prob, finished in zip(result.captions, result.log_probs, result.finished)]
            self.stream.write(json.dumps({"file": result.file, "caption": result.captions[0],
                                          "log_prob": round(result.log_probs[0], 4),
                                          "alternatives": alternatives}) + "\n")
        elif self.csv is not None:
            self.csv.writerow([result.file, result.captions[0], round(result.log_probs[0], 4)])
        else:
            self.stream.write(f"{shown_name(result.file, self.stream.encoding)}\t{result.captions[0]}\n")
        self.stream.flush()


def shown_name(name: str, encoding: str | None = None) -> str:
    """`name` as one line of text output and of stderr: itself, or a JSON string (ASCII) when it holds a
    tab, a newline or another unprintable character (a non-UTF-8 byte too), starts with a quote, or
    cannot be encoded in `encoding`: a file name never forges a second record."""
    plain = name.isprintable() and not name.startswith('"')
    if plain:
        try:
            name.encode(encoding or "utf-8")
        except UnicodeEncodeError:
            plain = False
    return name if plain else json.dumps(name)


class AttentionMapWriter:
    """`--attention-maps DIR`: one PNG per captioned image, DIR/<file stem>.png (-2, -3 ... on a clash)."""

    def __init__(self, model: Captioner, source: str, folder: Path) -> None:
        """Refusal, before any image is read, for a model without attention or a folder that cannot be made."""
        from captioner import attention_maps  # matplotlib only when maps are asked for

        if not attention_maps.has_attention(model):
            raise Refusal(f"--attention-maps: {source}: {attention_maps.NO_ATTENTION}")
        self.model, self.folder, self.maps = model, folder, attention_maps
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Refusal(f"--attention-maps {folder}: a file is in the way; name a folder") from None
        except OSError as error:
            raise Refusal(f"--attention-maps {folder}: cannot create the folder ({error.strerror})") from None
        self.used: set[str] = set()

    def write(self, files: list[str], pixels: torch.Tensor, generations: list[Generation]) -> None:
        for index, (file, generation) in enumerate(zip(files, generations)):
            trace = self.maps.trace_attention(self.model, pixels[index : index + 1], generation.token_ids[0],
                                              generation.finished[0])
            path = self.folder / self.name_for(file)
            try:
                self.maps.save_attention_figure(trace, path)
            except OSError as error:
                raise OutputError(f"--attention-maps: cannot write {path} ({error.strerror or error})") from None

    def name_for(self, file: str) -> str:
        stem, number = Path(file).stem, 1
        name = f"{stem}.png"
        while name in self.used:
            number += 1
            name = f"{stem}-{number}.png"
        self.used.add(name)
        return name
