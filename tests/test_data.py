"""Datasets and uniqueness levels: the embedded default, caption files, rules, local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from platonic import embedded
from platonic.captions.published import read_perturbations
from platonic.data import dataset_label, load_data
from platonic.errors import PlatonicError
from platonic.level_sources import file_levels, rule_levels
from platonic.levels import parse_levels

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "perturbed_data.json"


def test_embedded_is_deterministic_and_prefix_stable():
    assert embedded.captions(40, seed=3) == embedded.captions(40, seed=3)
    assert embedded.captions(10) == embedded.captions(512)[:10]
    assert embedded.captions(20, seed=1) != embedded.captions(20, seed=0)
    assert len(embedded.captions()) >= 512
    assert embedded.images(2)[0].tobytes() == embedded.images(1)[0].tobytes()


def test_embedded_levels_are_faithful_nested_and_disjoint_at_100():
    scenes = embedded.scenes(200)
    assert embedded.captions_at_level(0, 200) == embedded.captions(200)
    changed_before: list[set[str]] = [set() for _ in scenes]
    for level in embedded.LEVELS:
        for i, scene in enumerate(scenes):
            told = embedded.perturb(scene, i, level)
            changed = {a for a in embedded.ATTRIBUTES if getattr(told, a) != getattr(scene, a)}
            assert changed_before[i] <= changed  # nested: once replaced, always replaced
            changed_before[i] = changed
    assert all(len(c) == len(embedded.ATTRIBUTES) for c in changed_before)  # level 100: nothing shared


def test_embedded_caption_states_the_rendered_attributes():
    scene = embedded.Scene("two", "large", "red", "circle", "top left", "white")
    assert embedded.describe(scene) == "Two large red circles in the top left corner on a white background."
    image = embedded.render(scene, 100)
    assert image.getpixel((1, 99)) == embedded.BACKGROUNDS["white"]


def test_embedded_dataset_by_name():
    data = load_data("embedded", None, 6)
    assert dataset_label("embedded", None) == ("embedded", "seed0")
    assert data.subset == "seed0" and len(data) == 6 and len(data.images) == 6
    assert data.level_texts(0) == data.texts and data.level_texts(100) != data.texts
    with pytest.raises(PlatonicError, match="seed<N>"):
        load_data("embedded", "wit_1024", 2)
    with pytest.raises(PlatonicError, match="unknown dataset"):
        load_data("no/such-dataset")


def test_parse_levels():
    assert parse_levels("all") == list(range(0, 101, 10))
    assert parse_levels("0,10,...,50") == [0, 10, 20, 30, 40, 50]
    assert parse_levels("100, 0,50") == [0, 50, 100]
    assert parse_levels("0:100:50") == [0, 50, 100]
    for bad in ("0,x", "101", "", "0:100:0"):
        with pytest.raises(PlatonicError, match="--levels"):
            parse_levels(bad)


def _write_caption_file(path, entries):
    path.write_text(json.dumps([
        {f"Index - {i}": {"sentences": {f"Caption {k // 10} - {k}%": f"{i}@{k}" for k in levels},
                          "similarities": [0.5] * 10}} for i, levels in entries]))
    return path


def test_caption_file_levels_and_errors(tmp_path):
    path = _write_caption_file(tmp_path / "c.json", [(0, [0, 10, 100]), (1, [0, 10])])
    assert file_levels(path, 2)(10) == ["0@10", "1@10"]
    with pytest.raises(PlatonicError, match="sample index 1 has no caption at level 100"):
        file_levels(path, 2)(100)
    with pytest.raises(PlatonicError, match="no captions for sample index 2"):
        file_levels(path, 3)(0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PlatonicError, match="bad.json"):
        read_perturbations(tmp_path / "bad.json")


@pytest.mark.skipif(not PUBLISHED.exists(), reason="needs ../shared/reference/perturbed_data.json")
def test_published_caption_file_parses_to_1024_by_11():
    table = read_perturbations(PUBLISHED)
    assert sorted(table) == list(range(1024))
    assert all(sorted(levels) == list(range(0, 101, 10)) for levels in table.values())
    assert len(file_levels(PUBLISHED, 1024)(50)) == 1024


def test_rule_levels_are_seeded_and_level_zero_is_identity():
    texts = ["a red circle on a white background", "two blue squares at the top"]
    rules = rule_levels(texts, ["delete", "replace", "shuffle"])
    assert rules(0) == texts and rules(60) == rules(60) and rules(100) != texts
    with pytest.raises(PlatonicError, match="text_operations"):
        rule_levels(texts, ["explode"])


def test_local_imagefolder(tmp_path):
    for i, image in enumerate(embedded.images(3, image_size=32)):
        image.save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"{i}.png", "text": [f"caption {i}", f"other {i}"]}) + "\n" for i in range(3)))
    data = load_data(str(tmp_path), None, None, caption_idx=1)
    assert sorted(data.texts) == ["other 0", "other 1", "other 2"] and len(data.images) == 3
    with pytest.raises(PlatonicError, match="caption_idx 5"):
        load_data(str(tmp_path), None, None, caption_idx=5)
