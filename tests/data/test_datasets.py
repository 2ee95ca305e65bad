"""Datasets and uniqueness levels: the embedded default, caption files, rules, local folders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from platonic.data import embedded
from platonic.data.datasets import dataset_label, load_data
from platonic.data.level_sources import file_levels, rule_levels
from platonic.data.levels import parse_levels
from platonic.errors import PlatonicError
from platonic.io.published_captions import read_perturbations
from platonic.stages.extract import texts_by_level

PUBLISHED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "perturbed_data.json"


def test_embedded_is_deterministic_and_prefix_stable():
    assert embedded.captions(40, seed=3) == embedded.captions(40, seed=3)
    assert embedded.captions(10) == embedded.captions(512)[:10]
    assert embedded.captions(20, seed=1) != embedded.captions(20, seed=0)
    assert len(embedded.captions()) == embedded.DEFAULT_NUM_SAMPLES == 256
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


def test_embedded_replacement_rate_is_the_level_at_every_level():
    """The documented rule: at level u each attribute is replaced with probability u/100.

    Checked per attribute at intermediate levels, within 5 binomial standard deviations.
    """
    num = 2000
    scenes = embedded.scenes(num)
    for level in (10, 25, 50, 70, 90):
        told = [embedded.perturb(scene, i, level) for i, scene in enumerate(scenes)]
        p = level / 100
        tolerance = 5 * math.sqrt(num * p * (1 - p))
        for attribute in embedded.ATTRIBUTES:
            replaced = sum(getattr(t, attribute) != getattr(s, attribute)
                           for t, s in zip(told, scenes, strict=True))
            assert abs(replaced - num * p) < tolerance, (level, attribute, replaced / num)


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
    assert parse_levels(" 0, 10, ..., 100 ") == list(range(0, 101, 10))
    assert parse_levels("0,5,10,20,...,100") == [0, 5, *range(10, 101, 10)]
    assert parse_levels("0,10,...,50,75") == [0, 10, 20, 30, 40, 50, 75]
    assert parse_levels("100, 0,50") == [0, 50, 100]
    assert parse_levels("0:100:50") == [0, 50, 100]
    assert parse_levels("30") == [30]
    for bad in ("0,x", "101", "", "0:100:0"):
        with pytest.raises(PlatonicError, match="--levels"):
            parse_levels(bad)


@pytest.mark.parametrize("spec, why", [
    ("0,...,100", "'...' goes once, after two levels"),
    ("0,10,...,95", "95 is not reached from 10 in steps of 10"),
    ("0:95:10", "95 is not reached from 0 in steps of 10"),
    ("50,40,...,0", "positive step"),
    ("100:0:10", "0 is not reached from 100"),
    ("0,10,...", "before the last level"),
    ("0,10,...,50,...,100", "'...' goes once"),
    ("0:100", "start:stop:step"),
    ("0:100:-10", "positive step, got -10"),
    ("0:1o0:10", "'1o0' is not an integer"),
])
def test_ranges_need_a_step_whose_end_lies_on_it(spec, why):
    """A range that cannot be read as written is an error, never silently shortened."""
    with pytest.raises(PlatonicError, match=re.escape(why)) as caught:
        parse_levels(spec)
    assert str(caught.value).startswith(f"--levels {spec!r}: ") and "\n" not in str(caught.value)


def _write_caption_file(path, entries):
    path.write_text(json.dumps([
        {f"Index - {i}": {"sentences": {f"Caption {k // 10} - {k}%": f"{i}@{k}" for k in levels},
                          "similarities": [0.5] * 10}} for i, levels in entries]))
    return path


def test_caption_file_levels_and_errors(tmp_path):
    path = _write_caption_file(tmp_path / "c.json", [(0, [0, 10, 100]), (1, [0, 10])])
    texts = ["0@0", "1@0"]
    assert file_levels(path, texts)(10) == ["0@10", "1@10"]
    with pytest.raises(PlatonicError, match="sample index 1 has no caption at level 100"):
        file_levels(path, texts)(100)
    with pytest.raises(PlatonicError, match="no captions for sample index 2"):
        file_levels(path, [*texts, "2@0"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PlatonicError, match="bad.json"):
        read_perturbations(tmp_path / "bad.json")


def test_caption_value_that_is_not_a_string_is_named_as_such(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"Index - 0": {"sentences": {"Caption 0 - 0%": "a",
                                                            "Caption 1 - 10%": 7}}}]))
    with pytest.raises(PlatonicError) as caught:
        read_perturbations(path)
    assert str(caught.value) == f"{path}: Index - 0: caption 'Caption 1 - 10%' is not a string (got int 7)"


def test_caption_file_for_other_data_is_refused_at_the_first_mismatch(tmp_path):
    path = _write_caption_file(tmp_path / "c.json", [(i, [0, 50]) for i in range(4)])
    with pytest.raises(PlatonicError, match="sample index 2: the file's level-0 caption '2@0' is "
                                            "not the dataset's 'other caption'") as caught:
        file_levels(path, ["0@0", "1@0", "other caption", "also other"])
    assert "--allow_caption_mismatch" in str(caught.value) and "\n" not in str(caught.value)
    assert file_levels(path, ["0@0", " 1@0\n", "x", "y"], allow_mismatch=True)(50)[3] == "3@50"
    assert file_levels(path, ["0@0", " 1@0\n", "2@0", "3@0"])(50) == ["0@50", "1@50", "2@50", "3@50"]
    no_level0 = _write_caption_file(tmp_path / "d.json", [(0, [50])])
    with pytest.raises(PlatonicError, match="sample index 0 has no level-0 caption"):
        file_levels(no_level0, ["0@0"])


def _caption_file_of(path, originals):
    """A published-format file whose level-0 captions are `originals` (as create_dataset writes)."""
    from platonic.io import published_captions as published

    published.write(path, {i: published.CaptionEntry(i, text, tuple(f"{i}:{k}" for k in range(1, 11)),
                                                     (0.5,) * 10) for i, text in enumerate(originals)})
    return path


def test_embedded_caption_file_is_matched_and_another_seeds_refused(tmp_path):
    data = load_data("embedded", None, 5)
    own = _caption_file_of(tmp_path / "own.json", embedded.captions(5))
    assert texts_by_level(data, [0, 100], str(own))[100][4] == "4:10"
    other = _caption_file_of(tmp_path / "other.json", embedded.captions(5, seed=1))
    with pytest.raises(PlatonicError, match="sample index 0: the file's level-0 caption"):
        texts_by_level(data, [0, 100], str(other))
    assert texts_by_level(data, [100], str(other), allow_caption_mismatch=True)[100][0] == "0:10"


def test_extract_cli_refuses_a_mismatched_caption_file_unless_allowed(tmp_path):
    import extract_features

    other = _caption_file_of(tmp_path / "other.json", embedded.captions(2, seed=1))
    args = ["--dataset", "embedded", "--num_samples", "2", "--modality", "language", "--models",
            str(tmp_path / "no-such-model"), "--json_perturbations", str(other), "--levels", "0,100",
            "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(PlatonicError, match="sample index 0: the file's level-0 caption"):
        extract_features.main(args)
    with pytest.raises(PlatonicError) as caught:  # past the captions, on to the (missing) model
        extract_features.main([*args, "--allow_caption_mismatch"])
    assert "level-0 caption" not in str(caught.value) and "no-such-model" in str(caught.value)


@pytest.mark.skipif(not PUBLISHED.exists(), reason="needs ../shared/reference/perturbed_data.json")
def test_published_caption_file_parses_to_1024_by_11():
    table = read_perturbations(PUBLISHED)
    assert sorted(table) == list(range(1024))
    assert all(sorted(levels) == list(range(0, 101, 10)) for levels in table.values())
    originals = [table[i][0] for i in range(1024)]  # minhuh/prh wit_1024 text[0], as published
    assert len(file_levels(PUBLISHED, originals)(50)) == 1024
    assert sum("\n" in t for t in originals) > 0  # white space alone is not a mismatch:
    assert len(file_levels(PUBLISHED, [" ".join(t.split()) for t in originals])(50)) == 1024
    with pytest.raises(PlatonicError, match="sample index 0: "):
        file_levels(PUBLISHED, originals[1:] + originals[:1])


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


def test_embedded_images_are_rendered_as_read():
    """`load_data`'s images: a lazy sequence (len, index, negative index, slice, iteration) giving
    the rendered images, none rendered before being read."""
    from platonic.data.datasets import ImageSequence

    data = load_data("embedded", "seed0", 6)
    expected = [img.tobytes() for img in embedded.images(6)]
    assert isinstance(data.images, ImageSequence) and len(data.images) == 6
    assert [img.tobytes() for img in data.images] == expected
    assert data.images[-1].tobytes() == expected[5]
    part = data.images[1:5:2]
    assert len(part) == 2 and [img.tobytes() for img in part] == [expected[1], expected[3]]
    assert part[-1].tobytes() == expected[3]
    with pytest.raises(IndexError):
        data.images[6]
    reads = []
    lazy = ImageSequence(lambda i: reads.append(i) or embedded.images(1)[0], range(4))
    assert len(lazy[::-1]) == 4 and reads == []
    assert next(iter(lazy[2:])) is not None and reads == [2]
