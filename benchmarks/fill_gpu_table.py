"""Put a GPU check's results (``gpu_check.json``) into the GPU rows of ``benchmarks/README.md``.

    python benchmarks/fill_gpu_table.py OUT/gpu_check.json [--readme benchmarks/README.md]

Each table sits between ``<!-- gpu-check:NAME:begin -->`` and ``<!-- gpu-check:NAME:end -->``
(NAME: kernels, inference, meta, preprocess, gpu_tests); everything between a pair is replaced by the
table rendered from the JSON (``gpu_report.block``), device name included, so no number is copied
by hand and running it twice changes nothing. Sections the run did not select keep their block.
A dry run's JSON is refused unless ``--allow-dry-run``: its CPU numbers are not GPU rows.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # appended: a module name here must not shadow another one
    sys.path.append(str(Path(__file__).resolve().parent))

from gpu_report import TABLES, add_derived, block, load_result  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
BLOCKS = tuple(TABLES)  # kernels, inference, preprocess, meta, gpu_tests
NOT_SELECTED = "not selected (--only)"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- gpu-check:{name}:begin -->", f"<!-- gpu-check:{name}:end -->"


def filled_blocks(result: dict) -> list[str]:
    """The blocks this result has something for (a section the run left out keeps the old text)."""
    secs = result.get("sections", {})
    return [n for n in BLOCKS if n in secs and secs[n].get("reason") != NOT_SELECTED]


def fill(text: str, result: dict) -> str:
    """``text`` with every marked block that ``result`` covers replaced by its rendered table."""
    add_derived(result)
    missing = [n for n in BLOCKS if any(m not in text for m in markers(n))]
    if missing:
        raise ValueError(f"no gpu-check markers for {', '.join(missing)} in the README")
    for name in filled_blocks(result):
        begin, end = markers(name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        body = "\n".join(block(result, name))
        text = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result", type=Path, help="gpu_check.json written by benchmarks/gpu_check.py")
    parser.add_argument("--readme", type=Path, default=README, help="the Markdown file to fill (default: %(default)s)")
    parser.add_argument("--allow-dry-run", action="store_true", help="accept a --dry-run or CPU result (for tests)")
    args = parser.parse_args(argv)
    try:
        result = load_result(args.result)
        kind = result.get("device", {}).get("kind")
        if (result.get("dry_run") or kind != "cuda") and not args.allow_dry_run:
            raise ValueError(f"{args.result} is a {'dry run' if result.get('dry_run') else f'{kind} run'}, "
                             "not GPU measurements (pass --allow-dry-run to fill it anyway)")
        before = args.readme.read_text()
        after = fill(before, result)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if after != before:
        args.readme.write_text(after)
    print(f"{args.readme}: {', '.join(filled_blocks(result)) or 'nothing'} "
          f"{'filled' if after != before else 'already up to date'} from {args.result} "
          f"({result.get('device', {}).get('name')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
