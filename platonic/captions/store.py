"""Where finished captions live, so that a killed run loses nothing and asks for nothing twice.

Three files beside each other:
  `data.json`           the published format, rewritten atomically after every batch; each
                        entry records the sentence encoder of its similarities, and a run whose
                        encoder differs from the one of the entries it keeps is refused;
  `data.json.journal`   one JSON line per finished request, appended and fsynced the moment its
                        reply is validated, before the next one is asked for; a rerun folds
                        it into `data.json` (similarities are computed then, by that run's
                        encoder) and it is removed when the run ends;
  `data.failures.json`  the captions that could not be generated, with the reason, rewritten
                        with every batch and removed when there are none.
A finished index is one found in `data.json` or in the journal and not in the failures file; a
rerun never asks for it. A caption is never removed before its replacement is journaled: with
`force`, or after a failed forced attempt, the old caption stays in `data.json` until then.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from platonic.captions.client import Failed
from platonic.captions.similarity import DEFAULT_MODEL as PUBLISHED_SIMILARITY_MODEL
from platonic.errors import PlatonicError
from platonic.io import published_captions as published
from platonic.io.published_captions import CaptionEntry
from platonic.io.storage import write_json, write_text

SimilarityFn = Callable[[Sequence[str], Sequence[Sequence[str]]], list[list[float]]]


@dataclass(frozen=True)
class JournalRecord:
    index: int
    original: str
    captions: tuple[str, ...]


def journal_path(save_path: Path) -> Path:
    return save_path.with_name(save_path.name + ".journal")


def failures_path(save_path: Path) -> Path:
    return save_path.with_suffix(".failures.json")


def _read_journal(path: Path) -> list[JournalRecord]:
    """Records of a journal; a torn last line (killed while writing it) is ignored."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            record = JournalRecord(int(raw["index"]), str(raw["original"]),
                                   tuple(str(c) for c in raw["captions"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if line_no == len(lines):
                continue
            raise PlatonicError(f"{path}: line {line_no} is not a journal record") from None
        if len(record.captions) != published.NUM_LEVELS:
            raise PlatonicError(f"{path}: line {line_no} does not hold 10 captions")
        records.append(record)
    return records


class ResultStore:
    """The output file, its journal and its failures file, for one `save_path`.

    `similarity_model` names the encoder behind `similarity`; it is recorded in every entry.
    """

    def __init__(self, save_path: str | os.PathLike, similarity: SimilarityFn,
                 similarity_model: str) -> None:
        self.save_path = Path(save_path)
        self.journal = journal_path(self.save_path)
        self.failures_file = failures_path(self.save_path)
        self.similarity = similarity
        self.similarity_model = similarity_model
        self.entries: dict[int, CaptionEntry] = {}
        self.pending: dict[int, JournalRecord] = {}
        self.failures: dict[int, dict] = {}
        self.redo: set[int] = set()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def open(self, originals: dict[int, str], force: bool = False) -> None:
        """Load what earlier runs finished; with `force`, redo the indices asked for.

        Nothing is removed here: a caption to be redone (forced, or listed as failed by the last
        run while an older caption of it is in the output) stays in the output until its
        replacement is journaled. The journal is newer than the output, so its records win.
        """
        self.save_path.parent.mkdir(parents=True, exist_ok=True)
        if self.save_path.exists():
            self.entries = published.read(self.save_path)
        for record in _read_journal(self.journal):
            if not self._in_output(record):
                self.pending[record.index] = record
        self.redo = set(originals) if force else {
            i for i in _failed_indices(self.failures_file) if i in self.entries and i in originals}
        self._check_same_originals({i: o for i, o in originals.items() if i not in self.redo})
        self._check_same_similarity_model()
        self.flush()
        self.journal.unlink(missing_ok=True)

    def _in_output(self, record: JournalRecord) -> bool:
        entry = self.entries.get(record.index)
        return (entry is not None and entry.original == record.original
                and entry.captions == record.captions)

    def _check_same_originals(self, originals: dict[int, str]) -> None:
        done = {i: e.original for i, e in self.entries.items()}
        done.update({i: r.original for i, r in self.pending.items()})
        for index, original in originals.items():
            if index in done and done[index] != original:
                raise PlatonicError(f"{self.save_path}: index {index} holds another original "
                                    "caption than the input's; use --force or another --save_path")

    def _check_same_similarity_model(self) -> None:
        """Refuse to add similarities of one encoder to a file whose kept entries hold another's."""
        for index in sorted(set(self.entries) - self.redo):
            theirs = self.entries[index].similarity_model or PUBLISHED_SIMILARITY_MODEL
            if theirs != self.similarity_model:
                raise PlatonicError(
                    f"{self.save_path}: index {index} has similarities from {theirs!r}, this run "
                    f"computes them with {self.similarity_model!r}; rerun with --sim_model "
                    f"{theirs}, or --force over all its indices, or another --save_path")

    def is_done(self, index: int) -> bool:
        return index not in self.redo and (index in self.entries or index in self.pending)

    def record(self, index: int, original: str, captions: tuple[str, ...]) -> None:
        """Make a finished reply durable at once (append + fsync) before anything else."""
        record = JournalRecord(index, original, captions)
        line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.journal, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.pending[index] = record
            self.failures.pop(index, None)

    def record_failure(self, index: int, original: str, failure: Failed) -> None:
        with self._lock:
            self.failures[index] = {"index": index, "original": original, **asdict(failure)}

    def flush(self) -> None:
        """Compute the similarities of the pending captions and rewrite the output atomically.

        Safe to run in a worker thread while `record` goes on: only the records taken at the
        start are moved, and flushes run one at a time, so files are written in order.
        """
        with self._flush_lock:
            with self._lock:
                batch = [self.pending[i] for i in sorted(self.pending)]
            sims = (self.similarity([r.original for r in batch], [r.captions for r in batch])
                    if batch else [])
            with self._lock:
                for record, row in zip(batch, sims, strict=True):
                    self.entries[record.index] = CaptionEntry(
                        record.index, record.original, record.captions, tuple(row),
                        self.similarity_model)
                    del self.pending[record.index]
                text = published.dumps(self.entries) if batch else None
                failures = [self.failures[i] for i in sorted(self.failures)]
            if text is not None:
                write_text(self.save_path, text)
            self._write_failures(failures)

    def _write_failures(self, failures: list[dict]) -> None:
        if failures:
            write_json(self.failures_file, failures)
        else:
            self.failures_file.unlink(missing_ok=True)

    def close(self) -> None:
        """Final flush; the journal is then redundant with the output and goes."""
        self.flush()
        self.journal.unlink(missing_ok=True)


def _failed_indices(path: Path) -> set[int]:
    """Indices the last run listed as failed (a missing file: none)."""
    if not path.exists():
        return set()
    try:
        return {int(item["index"]) for item in json.loads(path.read_text(encoding="utf-8"))}
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise PlatonicError(f"{path}: not a failures file ({err}); remove it to go on") from None


def finished_indices(save_path: str | os.PathLike) -> set[int]:
    """Indices an earlier run finished (output and journal, less the failed), read only."""
    save_path = Path(save_path)
    done = set(published.read(save_path)) if save_path.exists() else set()
    done -= _failed_indices(failures_path(save_path))
    return done | {r.index for r in _read_journal(journal_path(save_path))}
