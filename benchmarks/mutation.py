"""`python -m benchmarks.mutation MODULE`: mutation-test one module against its own test file.

Why one module against one file: a test file should prove what its module does; a mutant
killed only by some distant end-to-end test is a behaviour nobody checks on purpose. So
`bulkgetty/MODULE.py` is mutated and only its mirror `tests/.../test_NAME.py` may kill its
mutants (MODULE is a path below bulkgetty/, e.g. `stages/transfer`; tests mirror that layout).

Why a script and not plain `mutmut run`: mutmut 3 reads one configuration (pyproject's
`[tool.mutmut]`, shared by every module) and has no option to choose the module or the test
file, so this sets those two fields on that configuration and runs mutmut in-process. It
starts from an empty `mutants/` (git-ignored) each time, because mutmut trusts a copied file's
mtime and would not mutate a module that an earlier run only copied. One mutmut child by
default: the machines this runs on are shared. Never part of CI (minutes per module).

The score printed is (killed + timeout + caught by the type check) / all mutants. Survivors
are listed with their diff; "message" marks a survivor whose only change is the wording of a
string (an error's or a reason's text, or the letter case of SQL), which the project's >= 90%
target sets aside; the second score leaves those out.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLED = frozenset({"killed", "timeout", "caught by type check", "segfault"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mutation", description=__doc__)
    parser.add_argument(
        "module",
        help="a module or package below bulkgetty/, e.g. getty/retry (bulkgetty/getty/retry.py, "
        "tested by tests/getty/test_retry.py)",
    )
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--quiet", action="store_true", help="list survivors without their diff")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="keep the last run of this module and try only its survivors again (after adding "
        "tests; quicker, but a fresh run is the figure to quote)",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    module = args.module.replace(".", "/")
    sources = _sources(module)
    parent, _, leaf = module.rpartition("/")
    tests = Path("tests") / parent / f"test_{leaf}.py"
    if not sources:
        parser.error(f"bulkgetty/{module}.py (or a package of that name) does not exist")
    if not tests.is_file():
        parser.error(f"{tests} does not exist")
    again = _survivors(sources) if args.survivors else []
    if not again:
        shutil.rmtree("mutants", ignore_errors=True)
    _run_mutmut(sources, tests, args.max_children, again)
    return _report(sources, module, tests, show_diffs=not args.quiet)


def _sources(module: str) -> list[Path]:
    """bulkgetty/MODULE.py, or every module of the package bulkgetty/MODULE/."""
    single = Path("bulkgetty") / f"{module}.py"
    if single.is_file():
        return [single]
    return sorted((Path("bulkgetty") / module).glob("*.py"))


def _statuses(sources: list[Path]) -> dict[str, tuple[Path, str]]:
    """Every mutant of `sources` from mutmut's last run: (its file, its status)."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    out: dict[str, tuple[Path, str]] = {}
    for source in sources:
        if not (Path("mutants") / f"{source}.meta").is_file():
            continue
        data = SourceFileMutationData(path=source)
        data.load()
        for name, code in data.exit_code_by_key.items():
            out[name] = (source, status_by_exit_code[code])
    return out


def _survivors(sources: list[Path]) -> list[str]:
    """The mutants that the last run left alive (none if it was another module)."""
    return sorted(name for name, (_, status) in _statuses(sources).items() if status not in KILLED)


def _run_mutmut(sources: list[Path], tests: Path, max_children: int, names: list[str]) -> None:
    from mutmut.__main__ import _run
    from mutmut.configuration import config

    cfg = config()
    cfg.only_mutate = [str(source) for source in sources]
    cfg.pytest_add_cli_args_test_selection = [str(tests)]
    try:
        _run(names, max_children)
    except SystemExit as exc:  # mutmut exits on a failing clean run; say so, keep the code
        if exc.code not in (0, None):
            raise


def _report(sources: list[Path], module: str, tests: Path, *, show_diffs: bool) -> int:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    statuses = _statuses(sources)
    total = len(statuses)
    killed = sum(status in KILLED for _, status in statuses.values())
    survivors = sorted(name for name, (_, status) in statuses.items() if status not in KILLED)
    diffs = {name: get_diff_for_mutant(name, path=statuses[name][0]) for name in survivors}
    messages = [name for name in survivors if _only_strings_changed(diffs[name])]
    print()
    for name in survivors:
        tag = " (message)" if name in messages else ""
        print(f"{statuses[name][1]}{tag}: {name}")
        if show_diffs:
            print("    " + "\n    ".join(diffs[name].splitlines()[2:]))
    print()
    what = str(sources[0]) if len(sources) == 1 else f"bulkgetty/{module}/ ({len(sources)} files)"
    print(f"{what} against {tests}: {killed}/{total} mutants killed, {_pct(killed, total)}")
    rest = total - len(messages)
    print(f"  message-string mutants aside: {killed}/{rest}, {_pct(killed, rest)}")
    return 0


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a (no mutants)"


def _only_strings_changed(diff: str) -> bool:
    """True when the mutant changes nothing but the wording of strings: the removed and added
    lines differ only inside string literals, and each changed literal is prose (has a space
    and is not SQL) or SQL that changed only its letter case (SQL keywords ignore case)."""
    lines = diff.splitlines()[2:]
    before = _tokens([line[1:] for line in lines if line.startswith("-")])
    after = _tokens([line[1:] for line in lines if line.startswith("+")])
    if not before or len(before) != len(after) or before == after:
        return False
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    return all(
        old[0] == tokenize.STRING and new[0] == tokenize.STRING and _wording(old[1], new[1])
        for old, new in changed
    )


_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|GROUP BY|ORDER BY|WHERE|SET)\b")


def _wording(old: str, new: str) -> bool:
    if _SQL.search(old):
        return old.lower() == new.lower()
    return " " in old


def _tokens(lines: list[str]) -> list[tuple[int, str]]:
    """The (type, text) tokens of `lines`; a statement the diff cut in two ends in "<cut>"."""
    text = "\n".join(line.strip() for line in lines) + "\n"
    tokens: list[tuple[int, str]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            tokens.append((tok.type, tok.string))
    except (tokenize.TokenError, SyntaxError):
        tokens.append((tokenize.ERRORTOKEN, "<cut>"))
    return tokens


if __name__ == "__main__":
    sys.exit(main())
