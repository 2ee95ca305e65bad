"""Where the captions at a uniqueness level come from, besides a dataset's own rules.

A level source is a function `level -> captions in dataset order`. Two kinds live here: a
caption file in the published format (`--json_perturbations`, read by
`platonic.io.published_captions`, matched to the dataset by index and checked by each row's level-0
caption), and rule-based word operations (`--text_operations`, the level is the percentage of
words touched). Datasets with levels of their own (the embedded set) give
theirs as `PairedData.level_texts`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from platonic.errors import PlatonicError
from platonic.io.published_captions import read_perturbations

TEXT_OPERATIONS = ("shuffle", "delete", "replace")


def file_levels(path: str | Path, texts: list[str],
                allow_mismatch: bool = False) -> Callable[[int], list[str]]:
    """Captions at a level from a published-format file, matched by index to the dataset `texts`.

    The file must cover every sample, and each sample's level-0 caption must be the dataset's own
    (white space aside): a file made for other data, another --caption_idx or another order is
    refused, naming the first index that differs, unless `allow_mismatch`.
    """
    table = read_perturbations(path)
    missing = next((i for i in range(len(texts)) if i not in table), None)
    if missing is not None:
        raise PlatonicError(f"{path}: no captions for sample index {missing}")
    if not allow_mismatch:
        _check_level0(path, table, texts)

    def level_texts(level: int) -> list[str]:
        absent = next((i for i in range(len(texts)) if level not in table[i]), None)
        if absent is not None:
            raise PlatonicError(f"{path}: sample index {absent} has no caption at level {level}% "
                                f"(levels: {sorted(table[absent])})")
        return [table[i][level] for i in range(len(texts))]

    return level_texts


def _check_level0(path: str | Path, table: dict[int, dict[int, str]], texts: list[str]) -> None:
    for index, text in enumerate(texts):
        level0 = table[index].get(0)
        if level0 is None:
            raise PlatonicError(f"{path}: sample index {index} has no level-0 caption to match "
                                "against the dataset's; pass --allow_caption_mismatch to use it "
                                "anyway")
        if level0.split() != text.split():  # white space aside
            raise PlatonicError(
                f"{path}: sample index {index}: the file's level-0 caption {level0[:60]!r} is not "
                f"the dataset's {text[:60]!r}, so the file was made for other data (or another "
                "--caption_idx); pass --allow_caption_mismatch to use it anyway")


def rule_levels(texts: list[str], operations: list[str], seed: int = 0) -> Callable[[int], list[str]]:
    """Word-level rules: at level p each word is touched with probability p/100 (seeded, nested).

    `delete` drops it, `replace` swaps in a random word from the other captions, `shuffle`
    permutes the touched words among their positions.
    """
    unknown = [op for op in operations if op not in TEXT_OPERATIONS]
    if unknown or not operations:
        raise PlatonicError(f"--text_operations: unknown {unknown or operations}; "
                            f"choose from {', '.join(TEXT_OPERATIONS)}")
    vocabulary = sorted({word for text in texts for word in text.split()})

    def level_texts(level: int) -> list[str]:
        return [_apply_rules(text, i, level, operations, vocabulary, seed) for i, text in enumerate(texts)]

    return level_texts


def _apply_rules(text: str, index: int, level: int, operations: list[str], vocabulary: list[str],
                 seed: int) -> str:
    rng = random.Random(f"platonic-rules:{seed}:{index}")
    words = text.split()
    draws = [(rng.random(), rng.choice(operations), rng.choice(vocabulary)) for _ in words]
    touched = [k for k, (r, _, _) in enumerate(draws) if r < level / 100]
    shuffled = [k for k in touched if draws[k][1] == "shuffle"]
    order = shuffled[:]
    random.Random(f"platonic-shuffle:{seed}:{index}:{level}").shuffle(order)
    result = list(words)
    for source, target in zip(shuffled, order, strict=True):
        result[target] = words[source]
    for k in touched:
        if draws[k][1] == "replace":
            result[k] = draws[k][2]
    return " ".join(w for k, w in enumerate(result) if not (k in touched and draws[k][1] == "delete"))
