"""Regenerate the README's figure tables from the recorded benchmark outputs in results/.

    python benchmarks/figures.py            # rewrite README.md's generated blocks (also: make figures)
    python benchmarks/figures.py --check    # only compare: exit 1 and show the difference if README.md is stale

A generated block is everything between a line `<!-- figures:NAME ... -->` and the line
`<!-- /figures:NAME -->`; the rest of the README is left as it is, so running this twice changes
nothing. Phrases that the prose quotes from a result (figure_tables.*_quotes) are checked too.

To add a figure: record its output under results/ (a name that says what and where it was
measured), write a formatter in figure_tables.py, add one line to FIGURES below, and put the two
marker lines where the table goes in README.md; then run this.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import figure_batch_science as fb  # noqa: E402
import figure_tables as ft  # noqa: E402


@dataclass(frozen=True)
class Figure:
    """One generated README block."""

    results: str  # the recorded output, relative to results/
    table: Callable[[Any], str]  # loaded results -> the block's markdown
    quotes: Callable[[Any], list[str]] | None = None  # loaded results -> phrases the prose must contain


FIGURES = {
    "mnist1d-accuracy": Figure("mnist1d-accuracy-cpu.json", ft.mnist1d_accuracy, ft.mnist1d_accuracy_quotes),
    "overhead": Figure("overhead-cpu.json", ft.overhead),
    "engines": Figure("engines-cpu.json", ft.engines, ft.engines_quotes),
    "comm": Figure("comm-cpu.json", ft.comm, ft.comm_quotes),
    "sweep-mnist1d": Figure("sweep-mnist1d-cpu/sweep.json", ft.sweep, ft.sweep_quotes),
    "gpu-check-h100": Figure("gpu-check-H100-80GB-HBM3-2026-11-27.json", ft.gpu_check, ft.gpu_check_quotes),
    "image-folder-gpu": Figure("gpu-check-H100-80GB-HBM3-2026-11-27.json", ft.image_folder_gpu,
                               ft.image_folder_gpu_quotes),
    "gpu-check": Figure("gpu-check-H200-2026-11-26.json", ft.gpu_check, ft.gpu_check_quotes),
    "inference": Figure("inference-resnet18-cpu/inference.json", ft.inference, ft.inference_quotes),
    "disk-data": Figure("disk-data-cpu.json", ft.disk_data),
    "batch-science-truth": Figure("batch-science/summary.json", fb.tuned_truth, fb.quotes),
    "batch-science-probe": Figure("batch-science/summary.json", fb.probe_against_truth),
    "batch-science-summary": Figure("batch-science/summary.json", fb.summary_table),
}

OPENING = re.compile(r"^<!-- figures:(?P<name>[\w.-]+) [^\n]*-->[ \t]*$", re.M)
BLOCK = re.compile(r"^<!-- figures:(?P<name>[\w.-]+) [^\n]*-->[ \t]*\n.*?^<!-- /figures:(?P=name) -->[ \t]*$",
                   re.M | re.S)


class FiguresError(Exception):
    """The README's markers and the FIGURES registry do not fit together, or a results file is missing."""


def load(figure: Figure, results_dir: Path) -> Any:
    """The figure's recorded output as parsed JSON."""
    path = results_dir / figure.results
    if not path.is_file():
        raise FiguresError(f"{path} is missing: record it (see benchmarks/README.md) or fix FIGURES in {__file__}")
    return json.loads(path.read_text())


def block(name: str, figure: Figure, data: Any) -> str:
    """The whole generated block, markers included; the opening marker says where the numbers come from."""
    return (f"<!-- figures:{name} generated from results/{figure.results} by `make figures`; do not edit -->"
            f"\n\n{figure.table(data).rstrip()}\n\n<!-- /figures:{name} -->")


def render(readme: str, results_dir: Path, figures: dict[str, Figure] | None = None) -> str:
    """The README with every generated block rewritten from results_dir; everything else unchanged."""
    figures = FIGURES if figures is None else figures
    opened = [m["name"] for m in OPENING.finditer(readme)]
    closed = [m["name"] for m in BLOCK.finditer(readme)]
    if opened != closed:
        raise FiguresError(f"figure blocks without their closing marker: {sorted(set(opened) - set(closed)) or opened}")
    if twice := sorted({n for n in opened if opened.count(n) > 1}):
        raise FiguresError(f"figure blocks that appear more than once: {twice}")
    if unknown := sorted(set(opened) - set(figures)):
        raise FiguresError(f"README has blocks that FIGURES does not know: {unknown}")
    if missing := sorted(set(figures) - set(opened)):
        raise FiguresError(f"FIGURES has blocks that the README does not place: {missing} (add their markers)")
    data = {name: load(fig, results_dir) for name, fig in figures.items()}
    return BLOCK.sub(lambda m: block(m["name"], figures[m["name"]], data[m["name"]]), readme)


def stale_quotes(readme: str, results_dir: Path, figures: dict[str, Figure] | None = None) -> list[str]:
    """Phrases the prose should quote from results_dir but does not ("block: phrase")."""
    figures = FIGURES if figures is None else figures
    prose = " ".join(readme.split())  # a quoted phrase may wrap across lines
    stale = []
    for name, fig in figures.items():
        if fig.quotes is None:
            continue
        try:
            phrases = fig.quotes(load(fig, results_dir))
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # the result no longer has what the prose quotes
            stale.append(f"{name}: cannot work out the quoted figures ({type(e).__name__}: {e})")
            continue
        stale += [f"{name}: {p}" for p in phrases if " ".join(p.split()) not in prose]
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if README.md differs from results/")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    a = p.parse_args(argv)
    old = a.readme.read_text()
    try:
        new = render(old, a.results)
    except FiguresError as e:
        print(f"figures.py: error: {e}", file=sys.stderr)
        return 2
    status = 0
    if new != old and a.check:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   str(a.readme), "regenerated from results/"))
        print(f"{a.readme} is not what {a.results} gives: run `make figures`", file=sys.stderr)
        status = 1
    elif new != old:
        a.readme.write_text(new)
        print(f"rewrote the figure blocks of {a.readme}")
    else:
        print(f"{a.readme} is up to date with {a.results}")
    if stale := stale_quotes(new, a.results):
        print(f"the prose of {a.readme} no longer quotes these figures of {a.results}; rewrite it:\n  "
              + "\n  ".join(stale), file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
