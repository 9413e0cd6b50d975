"""What the command lines share: a refusal is one line with exit status 2, and every number is checked
against an interval before any file is read.

    parser = OneLineParser(prog="python -m captioner.caption")
    args = parser.parse_args(argv)
    check_numbers(parser, args, {"beam_size": RANGES["eval.beam_size"], "temperature": "[0, 100]"})

An option that sets a config key takes that key's interval from `captioner.config.RANGES`, so a flag
and a config file accept the same values.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

from captioner.config import in_interval


class OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals on one line, `error: <what is wrong>`, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace, ranges: dict[str, str]) -> None:
    """Refuse (parser.error) the first option in `ranges` whose value lies outside its interval
    (RANGES notation, NaN lies in none); an option left unset (None) is not checked."""
    for name, interval in ranges.items():
        value = getattr(args, name)
        if value is not None and not in_interval(value, interval):
            parser.error(f"--{name.replace('_', '-')} {value}: expected a value in {interval}")
