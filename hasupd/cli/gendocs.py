"""Write (or with --check, compare) every file generated from the source: the configuration man pages
and JSON Schemas (from ``hasupd.config.reference``) and hasupctl's bash and zsh completion (from its
argument parser).

Run from the source tree: ``python3 -m hasupd.cli.gendocs``. Exit 0; with --check exit 1 and name the
files that differ from what would be generated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hasupd.cli.completion import bash_script, zsh_script
from hasupd.cli.ctl import build_parser
from hasupd.config.docgen import rendered

SOURCE_TREE = Path(__file__).resolve().parents[2]
REGENERATE = "python3 -m hasupd.cli.gendocs"
BASH_COMPLETION = "share/completion/hasupctl"
ZSH_COMPLETION = "share/completion/_hasupctl"


def generated(source_tree: Path = SOURCE_TREE) -> dict[str, str]:
    """Return {path relative to the source tree: text} of every generated file."""
    files = rendered(source_tree)
    parser = build_parser()
    files[BASH_COMPLETION] = bash_script(parser)
    files[ZSH_COMPLETION] = zsh_script(parser)
    return files


def stale(source_tree: Path = SOURCE_TREE) -> list[str]:
    """Return the generated files that are missing or differ from what the generator writes now."""
    out = []
    for relative, text in generated(source_tree).items():
        path = source_tree / relative
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(relative)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hasupd.cli.gendocs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for relative in outdated:
            print(f"{relative}: out of date; run {REGENERATE}", file=sys.stderr)
        return 1 if outdated else 0
    for relative, text in generated().items():
        path = SOURCE_TREE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
