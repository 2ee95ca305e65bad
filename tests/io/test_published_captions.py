"""The published caption-file format (`perturbed/data.json`): written as the original serialised
it, read with the bad entry named."""

from __future__ import annotations

import json

import pytest

from platonic.errors import PlatonicError
from platonic.io import published_captions as published
from platonic.io.published_captions import CaptionEntry, level_key


def test_format_is_the_published_serialisation(tmp_path):
    entry = CaptionEntry(3, 'A: "b"\nc', tuple(f"x{k}:y" for k in range(1, 11)),
                         tuple(0.1 * k for k in range(10)))
    path = tmp_path / "data.json"
    published.write(path, {3: entry})
    raw = path.read_text(encoding="utf-8")
    data = json.loads(raw)
    assert raw == json.dumps(data, indent=4)
    sentences = data[0]["Index - 3"]["sentences"]
    assert list(sentences) == [level_key(k) for k in range(1, 11)] + ["Caption 0 - 0%"]
    assert sentences["Caption 0 - 0%"] == 'A: "b"\nc'
    assert published.read(path) == {3: entry}


def test_read_names_the_bad_entry(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"Index - 0": {"sentences": {}, "similarities": []}}]))
    with pytest.raises(PlatonicError, match=r"data.json: entry 0 'sentences' must hold"):
        published.read(path)
    sentences = {**{level_key(k): f"c{k}" for k in range(1, 11)}, "Caption 0 - 0%": "o"}
    sentences[level_key(4)] = ["a list"]
    path.write_text(json.dumps([{"Index - 0": {"sentences": sentences, "similarities": [0.5] * 10}}]))
    with pytest.raises(PlatonicError, match=r"entry 0 caption 'Caption 4 - 40%' is not a string \(got list\)"):
        published.read(path)


