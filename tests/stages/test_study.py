"""The study table and its Markdown summary, against hand-written results and hand-made text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from platonic.io.features import feature_path, save_features
from platonic.io.results import AlignmentResult, save_result
from platonic.io.storage import level_dir
from platonic.stages.study import StudySpec, load_study, mean_bits_per_byte
from platonic.stages.study_statistics import summarise
from platonic.stages.summary import fmt, format_ci, markdown_table, render_summary

SPEC = StudySpec("toy", "s1", "mine", metric="mutual_knn", topk=2)
LMS = ["org/small", "org/big"]
VMS = ["vit_small_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2.lvd142m"]
LEVELS = [0, 50, 100]
# score[level][language][vision]: every pair falls with the level.
SCORES = {0: [[0.6, 0.5], [0.7, 0.65]], 50: [[0.5, 0.45], [0.6, 0.5]],
          100: [[0.4, 0.3], [0.55, 0.35]]}
BPB = {"org/small": [1.0, 1.2, 1.4], "org/big": [0.8, 0.8, 1.1]}  # per sample, same at every level


def _write(root, levels=LEVELS, bpb_for=LMS):
    align, feats = str(root / "u={}_alignment"), str(root / "u={}_features")
    for level in levels:
        result = AlignmentResult("mutual_knn", 2, LMS, VMS, np.array(SCORES[level]),
                                 [[(1, 2), (0, -1)], [None, (2, 2)]], meta={"level": level})
        save_result(SPEC.alignment_file(level_dir(align, level)), result)
        for lm in bpb_for:
            save_features(feature_path(level_dir(feats, level), "toy", "s1", lm, "avg"),
                          torch.zeros(3, 2, 4), {"model": lm}, {"bpb": torch.tensor(BPB[lm])})
    return align, feats


def test_the_table_holds_every_pair_of_every_level_with_its_layers_and_bits(tmp_path):
    study = load_study(SPEC, *_write(tmp_path), levels=LEVELS)
    frame = study.frame
    assert len(frame) == len(LEVELS) * len(LMS) * len(VMS)
    row = frame[(frame["level"] == 50) & (frame["language_model"] == "org/big")
                & (frame["vision_model"] == VMS[1])].iloc[0]
    assert row["score"] == 0.5 and (row["layer_language"], row["layer_vision"]) == (2, 2)
    assert row["bits_per_byte"] == pytest.approx((0.8 + 0.8 + 1.1) / 3)
    assert row["vision_family"] == "DINOv2" and row["vision_size"] == "base"
    undefined_layers = frame[(frame["language_model"] == "org/big") & (frame["vision_model"] == VMS[0])]
    assert undefined_layers["layer_language"].isna().all()
    assert study.performance.tolist() == (-frame["bits_per_byte"]).tolist()
    assert study.vision_models() == VMS and study.language_models() == LMS


def test_missing_bits_per_byte_is_a_note_naming_the_model_and_level(tmp_path):
    align, feats = _write(tmp_path, bpb_for=["org/small"])
    study = load_study(SPEC, align, feats, levels=LEVELS)
    assert study.frame.loc[study.frame["language_model"] == "org/big", "bits_per_byte"].isna().all()
    missing = [note for note in study.notes if note.startswith("language model org/big: no feature")]
    assert [note.split(" at level(s) ")[1][0] for note in missing] == ["0", "5", "1"]  # one a file
    value, reason = mean_bits_per_byte(feats, SPEC, 0, "org/small")
    assert value == pytest.approx(1.2) and reason is None


def test_summary_numbers_are_the_hand_computed_ones(tmp_path):
    study = load_study(SPEC, *_write(tmp_path), levels=LEVELS)
    summary = summarise(study, panel_levels=[50])
    means = [np.mean(SCORES[level]) for level in LEVELS]  # 0.6125, 0.5125, 0.4
    assert summary.level_means["mean_score"].tolist() == pytest.approx(means)
    assert summary.overall_rho == -1.0  # the mean falls at every level
    # slope at level 50 for the small ViT: OLS of score on -bpb over the two language models
    perf = [-1.2, -(0.8 + 0.8 + 1.1) / 3]
    expected = (0.6 - 0.5) / (perf[1] - perf[0])
    slopes = summary.slopes.set_index(["level", "vision_model"])["slope"]
    assert slopes[(50, VMS[0])] == pytest.approx(expected)
    text = render_summary(study, summary)
    assert "**-1.000**" in text
    assert "| 50 | 0.5125 | 4 |" in text
    assert f"| org/big | {VMS[1]} | -1.000 |" in text


def test_formatting_helpers():
    assert fmt(math.nan) == "undefined" and fmt(None) == "undefined"
    assert fmt(0.12345) == "0.123" and fmt(np.float32(2.0), 1) == "2.0" and fmt(3) == "3"
    assert format_ci(0.1, 0.25) == "[0.100, 0.250]" and format_ci(math.nan, 1.0) == "undefined"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
