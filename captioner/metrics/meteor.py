"""METEOR 1.5 (Denkowski & Lavie 2014) through the jar that the `pycocoevalcap` package ships, run with Java,
exactly as the coco-caption toolkit runs it (`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`).

METEOR aligns the caption with each reference by exact words, stems, synonyms (WordNet) and
paraphrases, then scores the alignment's recall-weighted F-mean with a fragmentation penalty. It is
not reimplemented here: the jar and its English paraphrase table are the reference. One Java process
is started on first use and kept for the life of the Python process (it loads the paraphrase table
once, about 5 s), so scoring every epoch's validation costs seconds, not a start-up each time.

Without a `java` on PATH, or without pycocoevalcap (the optional `meteor` extra: its jars are GPL/LGPL,
docs/licences.md), `unavailable_reason()` says why in one line, and the caller leaves METEOR out of its
table; nothing fails.
"""
from __future__ import annotations

import atexit
import importlib.util
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

Tokens = Sequence[str]
JAR = "meteor-1.5.jar"
COMMAND = ["java", "-jar", "-Xmx2G", JAR, "-", "-", "-stdio", "-l", "en", "-norm"]  # coco-caption's
_SCORER: dict[str, "MeteorProcess"] = {}  # the one Java process of this Python process
_LOCK = threading.Lock()


class MeteorError(RuntimeError):
    """The METEOR jar could not be run or gave an answer that is not a score."""


def jar_directory() -> Path | None:
    """The folder holding pycocoevalcap's METEOR jar, found without importing the package."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "meteor"
    return folder if (folder / JAR).is_file() else None


def unavailable_reason() -> str | None:
    """None when METEOR can run here, else one line saying what is missing."""
    if shutil.which("java") is None:
        return "METEOR left out: no `java` on PATH (install a Java runtime, e.g. apt-get install default-jre-headless)"
    if jar_directory() is None:
        return ("METEOR left out: no pycocoevalcap, which ships the METEOR 1.5 jar "
                "(the `meteor` extra: pip install -e '.[meteor]')")
    return None


class MeteorProcess:
    """The jar in -stdio mode: one `SCORE ||| refs ||| hypothesis` line per image gives its statistics,
    one `EVAL ||| stats ||| ...` line gives each image's score and then the corpus score."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(COMMAND, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, encoding="utf-8")

    def ask(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise MeteorError(f"the METEOR jar stopped (exit status {self.process.poll()})")
        return answer.strip()

    def corpus_score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        statistics = [self.ask(" ||| ".join(("SCORE", " ||| ".join(_clean(r) for r in refs), _clean(hypothesis))))
                      for hypothesis, refs in zip(hypotheses, references)]
        self.process.stdin.write(" ||| ".join(["EVAL", *statistics]) + "\n")
        self.process.stdin.flush()
        for _ in statistics:  # the per-image scores come first
            self.process.stdout.readline()
        answer = self.process.stdout.readline().strip()
        try:
            return float(answer)
        except ValueError:
            raise MeteorError(f"the METEOR jar answered {answer[:80]!r}, not a score") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.kill()
            self.process.wait()


def corpus_meteor(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """METEOR of the corpus, in [0, 1], as coco-caption reports it (×100 in our tables). Captions are
    given as words and joined with spaces. Raises MeteorError when METEOR cannot run (see unavailable_reason)."""
    if len(candidates) != len(references):
        raise ValueError(f"meteor: {len(candidates)} captions but {len(references)} reference lists")
    reason = unavailable_reason()
    if reason:
        raise MeteorError(reason)
    with _LOCK:  # one process, one conversation at a time
        if "process" not in _SCORER or _SCORER["process"].process.poll() is not None:
            _SCORER["process"] = MeteorProcess(jar_directory())
        hypotheses = [" ".join(words) for words in candidates]
        return _SCORER["process"].corpus_score(hypotheses, [[" ".join(words) for words in refs] for refs in references])


def _clean(text: str) -> str:
    """The jar splits on |||; coco-caption removes it from captions (and double spaces) the same way."""
    return text.replace("|||", "").replace("  ", " ")


@atexit.register
def _stop_the_process() -> None:
    if "process" in _SCORER:
        _SCORER["process"].close()
