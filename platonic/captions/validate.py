"""Check an existing caption file: structure, content faults, similarity summary per level.

Structural errors (entries not in the format, indices out of order, repeated or missing,
similarities that are not cosines or that come from more than one encoder) make the file
unusable by the next stages. Content faults
(empty, repeated or cut captions) leave it usable but the levels mean less than they say.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from platonic.captions.checks import cut_prefixes, normalised
from platonic.captions.similarity import DEFAULT_MODEL
from platonic.io import published_captions as published
from platonic.io.published_captions import CaptionEntry

MAX_LISTED = 20
COSINE_SLACK = 1e-4


@dataclass
class FileReport:
    path: Path
    num_entries: int = 0
    indices: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    faults: dict[str, dict[int, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    with_line_breaks: int = 0
    similarities: list[list[float]] = field(default_factory=lambda: [[] for _ in range(10)])
    similarity_models: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.errors


CUT = "cut captions (a level equals the original's text before a ':')"
EMPTY = "empty captions"
REPEATED = "captions repeating another level of the same entry"
ORIGINAL = "captions repeating the original"
FAULT_KINDS = (CUT, EMPTY, REPEATED, ORIGINAL)


def _entry_faults(entry: CaptionEntry) -> dict[str, list[int]]:
    """Levels (1..10) of each content fault in one entry."""
    faults: dict[str, list[int]] = defaultdict(list)
    cut, original = cut_prefixes(entry.original), normalised(entry.original)
    seen: set[str] = set()
    for level, caption in enumerate(entry.captions, start=1):
        text = normalised(caption)
        if not text:
            faults[EMPTY].append(level)
        if text in cut:
            faults[CUT].append(level)
        if text == original:
            faults[ORIGINAL].append(level)
        if text and text in seen:
            faults[REPEATED].append(level)
        seen.add(text)
    return faults


def _check_similarities(report: FileReport, entry: CaptionEntry) -> None:
    for level, sim in enumerate(entry.similarities, start=1):
        if not math.isfinite(sim) or abs(sim) > 1 + COSINE_SLACK:
            report.errors.append(f"index {entry.index}: similarity of level {level} is {sim}, "
                                 "not a cosine")
        else:
            report.similarities[level - 1].append(sim)


def _check_indices(report: FileReport) -> None:
    indices = report.indices
    for before, after in zip(indices, indices[1:], strict=False):
        if after <= before:
            report.errors.append(f"index {after} comes after index {before}: "
                                 "entries must be in increasing index order")
    missing = sorted(set(range(min(indices), max(indices) + 1)) - set(indices)) if indices else []
    if missing:
        report.errors.append(f"{len(missing)} indices missing between {min(indices)} and "
                             f"{max(indices)}: {_listed(missing)}")


def validate_file(path: str | os.PathLike) -> FileReport:
    """Read and check a caption file; an unreadable or non-list file is a `PlatonicError`."""
    report = FileReport(Path(path))
    items = published.load_json_list(path)
    report.num_entries = len(items)
    for position, item in enumerate(items):
        problem = published.entry_problem(item)
        if problem:
            report.errors.append(f"entry {position} {problem}")
            continue
        entry = published.entry_from_json(item)
        report.indices.append(entry.index)
        _check_similarities(report, entry)
        for kind, levels in _entry_faults(entry).items():
            report.faults[kind][entry.index] = levels
        report.with_line_breaks += sum("\n" in t for t in (*entry.captions, entry.original))
        report.similarity_models[entry.similarity_model or DEFAULT_MODEL] += 1
    _check_indices(report)
    if len(report.similarity_models) > 1:
        report.errors.append(f"similarities from {len(report.similarity_models)} encoders "
                             f"({_models(report)}): levels are not comparable across entries")
    return report


def _models(report: FileReport) -> str:
    return ", ".join(f"{name} in {n}" for name, n in report.similarity_models.most_common())


def _listed(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:MAX_LISTED])
    return shown + (f", ... ({len(values) - MAX_LISTED} more)" if len(values) > MAX_LISTED else "")


def _levels(levels: list[int]) -> str:
    if levels == list(range(levels[0], levels[-1] + 1)) and len(levels) > 2:
        return f"levels {levels[0]}-{levels[-1]}"
    return ("level " if len(levels) == 1 else "levels ") + ", ".join(map(str, levels))


def _similarity_lines(report: FileReport) -> list[str]:
    lines = [f"similarity to the original per level ({'n':>5} {'mean':>6} {'std':>6} "
             f"{'min':>6} {'max':>6})"]
    for level, sims in enumerate(report.similarities, start=1):
        if not sims:
            continue
        std = statistics.pstdev(sims)
        lines.append(f"  {published.level_key(level):<24} {len(sims):>5} "
                     f"{statistics.fmean(sims):6.3f} {std:6.3f} {min(sims):6.3f} {max(sims):6.3f}")
    return lines


def format_report(report: FileReport) -> str:
    """The report as printed by `--validate`."""
    span = f", indices {min(report.indices)}..{max(report.indices)}" if report.indices else ""
    lines = [f"{report.path}: {report.num_entries} entries{span}"]
    lines.append("structure: ok" if report.ok else f"structure: {len(report.errors)} errors")
    lines += [f"  error: {e}" for e in report.errors[:MAX_LISTED]]
    if len(report.errors) > MAX_LISTED:
        lines.append(f"  ... ({len(report.errors) - MAX_LISTED} more errors)")
    for kind in FAULT_KINDS:
        found = report.faults.get(kind, {})
        detail = "; ".join(f"{i} ({_levels(found[i])})" for i in sorted(found)[:MAX_LISTED])
        more = f"; ... ({len(found) - MAX_LISTED} more)" if len(found) > MAX_LISTED else ""
        lines.append(f"{kind}: {len(found)} entries" + (f": {detail}{more}" if found else ""))
    lines.append(f"captions with line breaks (kept, not faults): {report.with_line_breaks}")
    if report.similarity_models:
        lines.append(f"similarity model: {_models(report)}")
    return "\n".join(lines + _similarity_lines(report))
