"""Check (or update) the README's quickstart table against what `asarm quickstart` wrote.

    python3 -m asarm quickstart                # deterministic: the same numbers on every run
    python3 scripts/check_readme.py            # exit 1 when the README's table differs
    python3 scripts/check_readme.py --write    # copy the command's table into the README

The table sits between the README's `<!-- quickstart-table` and `<!-- /quickstart-table -->` lines.
Columns whose header starts with "time" are wall-clock measurements and are not compared (the rest
is deterministic: same seed, one thread).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "outputs" / "quickstart" / "speculative" / "results.md"
BEGIN, END = "<!-- quickstart-table", "<!-- /quickstart-table -->"


def first_table(text: str) -> list[str]:
    """The lines of the first markdown table in ``text``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise ValueError("no markdown table found")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def parse(table: list[str]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a markdown table's lines (the separator line dropped)."""
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
    if len(cells) < 3 or not all(set(c) <= set("-: ") for c in cells[1]):
        raise ValueError("not a markdown table with a header, a separator and rows")
    header, rows = cells[0], cells[2:]
    if any(len(r) != len(header) for r in rows):
        raise ValueError("a row has a different number of cells than the header")
    return header, rows


def comparable(table: list[str]) -> tuple[list[str], list[list[str]]]:
    """The table without its wall-clock columns."""
    header, rows = parse(table)
    keep = [i for i, h in enumerate(header) if not h.lower().startswith("time")]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows]


def readme_block(readme: str) -> tuple[int, int]:
    """Line indices (begin marker, end marker) of the README's quickstart table."""
    lines = readme.splitlines()
    begin = next((i for i, line in enumerate(lines) if line.startswith(BEGIN)), None)
    end = next((i for i, line in enumerate(lines) if line.startswith(END)), None)
    if begin is None or end is None or end < begin:
        raise ValueError(f"the README lacks the {BEGIN} ... {END} block")
    return begin, end


def readme_table(readme: str) -> list[str]:
    begin, end = readme_block(readme)
    return first_table("\n".join(readme.splitlines()[begin + 1:end]))


def differences(readme: str, results: str) -> list[str]:
    """What differs between the README's table and the command's (wall-clock columns left out)."""
    (h1, r1), (h2, r2) = comparable(readme_table(readme)), comparable(first_table(results))
    if h1 != h2:
        return [f"columns: README {h1}, command {h2}"]
    out = []
    for a, b in zip(r1, r2):
        if a != b:
            out.append(f"row {a[0]}: README {a[1:]}, command {b[1:]}")
    if len(r1) != len(r2):
        out.append(f"rows: README {len(r1)}, command {len(r2)}")
    return out


def write(readme: str, results: str) -> str:
    """The README with its quickstart table replaced by the command's."""
    lines = readme.splitlines()
    begin, end = readme_block(readme)
    return "\n".join(lines[:begin + 1] + first_table(results) + lines[end:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(RESULTS),
                    help="the quickstart's results.md (default: %(default)s)")
    ap.add_argument("--readme", default=str(README), help="(default: %(default)s)")
    ap.add_argument("--write", action="store_true", help="copy the command's table into the README")
    args = ap.parse_args(argv)
    results_path = Path(args.results)
    if not results_path.is_file():
        print(f"{results_path} not found: run `python3 -m asarm quickstart` first", file=sys.stderr)
        return 2
    readme = Path(args.readme).read_text(encoding="utf-8")
    results = results_path.read_text(encoding="utf-8")
    if args.write:
        Path(args.readme).write_text(write(readme, results), encoding="utf-8")
        print(f"wrote the quickstart table of {results_path} into {args.readme}")
        return 0
    diff = differences(readme, results)
    for line in diff:
        print(f"README quickstart table differs from {results_path}: {line}", file=sys.stderr)
    if not diff:
        print("README quickstart table matches the command's output")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
