"""The file formats and their writing, read back independently (json, csv, safetensors)."""

from __future__ import annotations

import csv
import json
import math
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from platonic.errors import PlatonicError
from platonic.io.features import (
    feature_path,
    load_features,
    read_layer,
    read_meta,
    save_features,
    verified_fingerprint,
)
from platonic.io.fingerprints import images_fingerprint, texts_fingerprint
from platonic.io.results import (
    AlignmentResult,
    Calibration,
    IncompleteResult,
    csv_path,
    load_result,
    save_result,
)
from platonic.io.storage import atomic_path, level_dir


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]


def test_a_stop_while_the_temporary_file_is_made_leaves_none(tmp_path, monkeypatch):
    """Ctrl-C landing right after the temporary file is created (before any write) still removes
    it: its name is known before it exists (a name from mkstemp came back only after, so such a
    stop left it behind, as the SIGTERM driver test saw now and then)."""
    made = os.open

    def made_then_stopped(*args, **kwargs):
        os.close(made(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", made_then_stopped)
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("never")
    assert list(tmp_path.iterdir()) == []


def test_a_written_file_gets_the_umask_mode(tmp_path):
    """Not the private 0600 of a temporary file: other users read results as with open()."""
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_read_layer_gives_each_layer_of_the_file(tmp_path, dtype):
    """Every layer read by positioned reads equals that slice of the whole tensor, with extras
    stored beside the features (their bytes shift where the features start): an off-by-one in
    the row stride, the layer offset or the header length would read other numbers."""
    feats = torch.randn(7, 4, 5).to(dtype)
    path = tmp_path / "f.safetensors"
    save_features(path, feats, {"model": "m"}, {"bpb": torch.rand(7), "loss": torch.rand(7)})
    for layer in range(4):
        got = read_layer(path, layer)
        assert got.dtype == dtype and torch.equal(got, feats[:, layer])
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # into the features (280+ bytes; at most 56 of extras follow)
    with pytest.raises(PlatonicError, match=r"f\.safetensors: (truncated|feats of shape)"):
        read_layer(path, 3)


def test_level_folders_from_a_template_or_a_sub_folder():
    assert level_dir("B/gpt_u={}_features", 30).as_posix() == "B/gpt_u=30_features"
    assert level_dir("B/feats", 30).as_posix() == "B/feats/u=30"
    assert level_dir("B/feats", "test").as_posix() == "B/feats/test"
    assert level_dir("B/feats", None).as_posix() == "B/feats"
    with pytest.raises(PlatonicError, match="needs a uniqueness level"):
        level_dir("B/u={}", None)


def _result() -> AlignmentResult:
    calibration = Calibration(0.4, 0.1, 0.2, 0.01, 1 / 3, 99, math.nan, math.nan, 0, "gather")
    return AlignmentResult("mutual_knn", 5, ["lm/a", "lm/b"], ["vit"],
                           np.array([[0.4], [math.nan]]), [[(2, -1)], [None]],
                           meta={"level": 30}, grids={(0, 0): np.array([[0.1, 0.4], [0.3, 0.2]])},
                           calibration={(0, 0): calibration})


def test_an_alignment_result_as_json_and_csv(tmp_path):
    path = tmp_path / "mutual_knn_k5.json"
    save_result(path, _result())
    data = json.loads(path.read_text())
    assert data["scores"] == [[0.4], [None]] and data["indices"] == [[[2, -1]], [None]]
    assert data["level"] == 30 and data["models_x"] == ["lm/a", "lm/b"]
    assert data["calibration"][0][0]["ci_low"] is None and data["calibration"][1][0] is None
    with open(csv_path(path), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model_x"], r["score"], r["layer_x"], r["layer_y"]) for r in rows] == [
        ("lm/a", "0.4", "2", "-1"), ("lm/b", "", "", "")]
    assert rows[0]["calibrated"] == str(1 / 3) and rows[1]["null_mean"] == ""
    back = load_result(path, with_grids=True)
    assert back.indices == [[(2, -1)], [None]] and math.isnan(back.scores[1, 0])
    np.testing.assert_array_equal(back.grids[(0, 0)], [[0.1, 0.4], [0.3, 0.2]])
    assert back.calibration[(0, 0)].calibrated == pytest.approx(1 / 3)
    assert math.isnan(back.calibration[(0, 0)].ci_low)


def test_a_result_whose_csv_is_from_another_run_is_incomplete(tmp_path):
    path = tmp_path / "mutual_knn_k5.json"
    save_result(path, _result())
    csv_path(path).write_text(csv_path(path).read_text().replace("0.4", "0.5"))
    with pytest.raises(IncompleteResult, match="mutual_knn_k5.csv missing or from another run"):
        load_result(path)


def test_a_feature_file_holds_its_tensors_and_metadata(tmp_path):
    path = feature_path(tmp_path, "prh", "wit", "org/model", "avg")
    assert path == tmp_path / "prh" / "wit" / "org_model_pool-avg.safetensors"
    feats = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    save_features(path, feats, {"model": "org/model"}, {"bpb": torch.tensor([1.0, 2.0])})
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("feats"), feats)
        assert torch.equal(f.get_tensor("bpb"), torch.tensor([1.0, 2.0]))
        meta = json.loads(f.metadata()["platonic"])
    assert (meta["num_samples"], meta["num_layers"], meta["dim"]) == (2, 3, 4)
    assert meta["model"] == "org/model" and read_meta(path) == meta
    assert torch.equal(load_features(path).feats, feats)
    assert verified_fingerprint(path) == meta["content_sha256"]


def test_an_edited_feature_file_is_refused(tmp_path):
    path = tmp_path / "f.safetensors"
    save_features(path, torch.ones(2, 1, 3), {"model": "m"})
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file({"feats": torch.full((2, 1, 3), 2.0)}, str(path), metadata=metadata)
    with pytest.raises(PlatonicError, match="do not match their recorded SHA-256"):
        verified_fingerprint(path)


def test_fingerprints_follow_the_content_and_its_order():
    grey, also_grey = Image.new("RGB", (4, 4), (9, 9, 9)), Image.new("RGB", (4, 4), (9, 9, 9))
    assert images_fingerprint([grey]) == images_fingerprint([also_grey])
    also_grey.putpixel((0, 0), (9, 9, 10))
    assert images_fingerprint([grey]) != images_fingerprint([also_grey])
    assert texts_fingerprint(["a", "b"]) != texts_fingerprint(["b", "a"])
    assert texts_fingerprint(["a b"]) != texts_fingerprint(["a", "b"])
