"""The argument parser's manners: defaults in every `--help`, the nearest option for a typo.

Why: a first-time user reads `--help` for what happens when an option is left out, and types
long option names by hand; "unrecognized arguments: --concurency" alone sends them back to
the help, "did you mean --concurrency?" does not.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Any

__all__ = ("HelpFormatter", "Parser", "nearest_option")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written; each option's default appended to its help unless it says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or isinstance(default, bool)
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown options get the nearest known one as a hint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self._command_parser(parsed)
            hint = nearest_option(extras, owner)
            owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub-)command's own parser, whose options and usage fit the mistake."""
        parser: argparse.ArgumentParser = self
        while True:
            found = None
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction) and action.dest:
                    chosen = getattr(parsed, action.dest, None)
                    found = action.choices.get(chosen) if chosen else None
            if found is None:
                return parser
            parser = found


def nearest_option(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """`: did you mean --X?` for the first unknown option close to a known one, or ""."""
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    for extra in extras:
        if not extra.startswith("--"):
            continue
        close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""
