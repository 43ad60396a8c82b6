"""README's tables of results say what the committed records say.

A row that links run folders under results/ gives, for those folders' summary.json files: the number of seeds,
the final epoch's top-1 (one folder) or the mean ± sample standard deviation over them with each seed's, the many-
and medium-shot accuracy (their mean), the test-selected best epoch it names, and each run's wall time. A figure
mistyped, or a run finished again without its row, fails here.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RECORDS = "weights and record"  # the column that links a row's run folders
RUN_LINK = re.compile(r"\]\((results/[^)]+)/RUN\.md\)")
NUMBER = re.compile(r"\d+\.\d+")
BEST = re.compile(r"(?:seed (\d+)'s )?best (\d+\.\d+), epoch (\d+)")


def tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of `text`, each a list of rows of stripped cells (the separator row left out)."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def linked_rows() -> list[dict[str, str]]:
    rows = []
    for header, *body in tables(README.read_text()):
        for cells in body:
            row = dict(zip(header, cells))
            if RUN_LINK.search(row.get(RECORDS, "")):
                rows.append(row)
    return rows


ROWS = linked_rows()
ROWS_WITH_BEST = [row for row in ROWS if BEST.search(row["top-1"])]


def row_id(row: dict[str, str]) -> str:
    return f"{row['method']}, {row['recipe']}"


def summaries(row: dict[str, str]) -> list[dict]:
    return [json.loads((ROOT / folder / "summary.json").read_text()) for folder in RUN_LINK.findall(row[RECORDS])]


def wall_time(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def test_the_readme_has_the_tables_this_checks():
    assert len(ROWS) >= 8 and len(ROWS_WITH_BEST) >= 8
    assert {"seeds", "top-1", "many", "medium", "wall time"} <= set(ROWS[0])


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_a_readme_row_gives_its_folders_final_figures(row):
    finals = [summary["final"] for summary in summaries(row)]
    assert int(row["seeds"]) == len(finals)
    top1 = [float(value) for value in NUMBER.findall(row["top-1"])]
    if len(finals) == 1:
        assert top1[0] == pytest.approx(finals[0]["top1"], abs=0.005)
    else:
        assert top1[0] == pytest.approx(statistics.mean(final["top1"] for final in finals), abs=0.006)
        assert top1[1] == pytest.approx(statistics.stdev(final["top1"] for final in finals), abs=0.006)
        assert top1[2:2 + len(finals)] == pytest.approx([final["top1"] for final in finals], abs=0.005)
    for column in ("many", "medium"):
        assert float(row[column]) == pytest.approx(statistics.mean(final[column] for final in finals), abs=0.006)


@pytest.mark.parametrize("row", ROWS_WITH_BEST, ids=row_id)
def test_a_readme_row_gives_the_best_epoch_of_its_run(row):
    """The test-selected best beside the headline: the one folder's, or that of the seed the cell names."""
    seed, top1, epoch = BEST.search(row["top-1"]).groups()
    runs = summaries(row)
    if seed is not None:
        runs = [summary for summary in runs if summary["config"]["train"]["seed"] == int(seed)]
    assert len(runs) == 1
    assert (float(top1), int(epoch)) == (pytest.approx(runs[0]["best"]["top1"], abs=0.005), runs[0]["best"]["epoch"])


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_a_readme_row_gives_each_runs_wall_time(row):
    assert row["wall time"].split(", ") == [wall_time(summary["wall_seconds"]) for summary in summaries(row)]
