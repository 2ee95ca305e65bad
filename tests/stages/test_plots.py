"""plots/report on hand-made alignment results and feature files: outputs, numbers, edge cases."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import plot_alignment
from platonic.core.statistics import bootstrap_mean_rho
from platonic.errors import PlatonicError
from platonic.io.features import feature_path, save_features
from platonic.io.results import AlignmentResult, load_result, save_result
from platonic.io.storage import level_dir
from platonic.run.exit_codes import run_cli
from platonic.stages import plots
from platonic.stages.study import StudySpec, load_study
from platonic.stages.study_statistics import summarise

LANGUAGE = ["org/lm-small", "org/lm-large", "org/encoder"]  # the encoder has no bits per byte
DINO = ["vit_small_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2.lvd142m",
        "vit_large_patch14_dinov2.lvd142m"]
USER_VISION = "acme/tiny-cnn"  # not registered: a family of its own, one model
VISION = [*DINO, USER_VISION]
LEVELS = [0, 30, 60, 100]
SPEC = StudySpec("toy", "s1", "mine", metric="mutual_knn", topk=2)
FAST_DPI = 40
PNG_ONLY = {"dpi": FAST_DPI, "formats": ("png",)}


def plot_study(spec: StudySpec, align, feats, plot_dir, **settings) -> plots.StudyOutputs:
    return plots.run(plots.Settings(spec, align, feats, plot_dir, **settings))


def make_scores(level: int) -> np.ndarray:
    """Falls with the level for every pair, by a pair-specific amount, plus seeded jitter."""
    rng = np.random.default_rng(level)
    li = np.arange(len(LANGUAGE))[:, None]
    vi = np.arange(len(VISION))[None, :]
    return 0.5 + 0.05 * li - 0.0008 * level * vi + 0.08 * rng.random((len(LANGUAGE), len(VISION)))


def make_bpb(level: int, li: int, constant: bool) -> torch.Tensor:
    base = 1.0 if constant else 1.5 - 0.3 * li + 0.001 * level
    return torch.tensor([base - 0.1, base, base + 0.1], dtype=torch.float32)


def write_study(root, levels=LEVELS, constant_bpb=False, undefined=None):
    """`undefined`: (level, language index, vision index) of a pair stored as undefined."""
    align, feats = str(root / "u={}_alignment"), str(root / "u={}_features")
    for level in levels:
        indices = [[(li % 2, -1 if vi == 0 else vi) for vi in range(len(VISION))]
                   for li in range(len(LANGUAGE))]
        indices[0][1] = None
        scores = make_scores(level)
        if undefined and undefined[0] == level:
            scores[undefined[1], undefined[2]] = np.nan
            indices[undefined[1]][undefined[2]] = None
        result = AlignmentResult(SPEC.metric, SPEC.topk, LANGUAGE, VISION, scores,
                                 indices, meta={"level": level})
        save_result(SPEC.alignment_file(level_dir(align, level)), result)
        for li, lm in enumerate(LANGUAGE):
            extras = {} if lm == "org/encoder" else {"bpb": make_bpb(level, li, constant_bpb)}
            path = feature_path(level_dir(feats, level), SPEC.dataset, SPEC.subset, lm,
                                SPEC.pool_x, SPEC.prompt_x)
            save_features(path, torch.randn(3, 2, 4), {"model": lm, "level": level}, extras)
    return align, feats


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def outputs(study_dirs, tmp_path_factory):
    align, feats = study_dirs
    return plot_study(SPEC, align, feats, tmp_path_factory.mktemp("plots"), levels=LEVELS,
                      panel_levels=[30, 60], same_scale=True, dpi=FAST_DPI)


def test_every_output_exists_and_is_not_empty(outputs):
    names = {p.name for p in outputs.figures}
    for family in ("dinov2", "tiny_cnn"):
        for kind in ("performance", "uniqueness"):
            assert {f"alignment_vs_{kind}_{family}.png", f"alignment_vs_{kind}_{family}.pdf"} <= names
    assert {f"heatmap_u={lv}.{ext}" for lv in LEVELS for ext in ("png", "pdf")} <= names
    assert len(names) == 16
    for path in outputs.figures:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")
    assert outputs.csv.stat().st_size > 0 and outputs.summary_path.stat().st_size > 0
    assert not list(outputs.folder.glob(".*tmp"))
    assert str(outputs.folder) in outputs.describe()


def test_csv_matches_the_inputs(outputs):
    table = pd.read_csv(outputs.csv)
    assert len(table) == len(LEVELS) * len(LANGUAGE) * len(VISION)
    for level in LEVELS:
        scores = make_scores(level)
        at = table[table["level"] == level]
        for li, lm in enumerate(LANGUAGE):
            for vi, vm in enumerate(VISION):
                row = at[(at["language_model"] == lm) & (at["vision_model"] == vm)].iloc[0]
                assert row["score"] == pytest.approx(scores[li, vi], abs=1e-12)
                assert row["metric"] == "mutual_knn" and row["topk"] == 2
                if (li, vi) == (0, 1):
                    assert math.isnan(row["layer_language"]) and math.isnan(row["layer_vision"])
                else:
                    assert row["layer_language"] == li % 2
                    assert row["layer_vision"] == (-1 if vi == 0 else vi)
                expected_bpb = math.nan if lm == "org/encoder" else float(make_bpb(level, li, False).mean())
                assert row["bits_per_byte"] == pytest.approx(expected_bpb, nan_ok=True)
    dino = table[table["vision_model"].isin(DINO)]
    assert set(dino["vision_family"]) == {"DINOv2"}
    assert set(dino["vision_size"]) == {"small", "base", "large"}
    assert set(table[table["vision_model"] == USER_VISION]["vision_family"]) == {"tiny-cnn"}


def scipy_family_rho(models: list[str]) -> float:
    """Mean over vision models of spearmanr(level, alignment averaged over language models)."""
    vi = [VISION.index(m) for m in models]
    per_level = np.array([make_scores(lv)[:, vi].mean(axis=0) for lv in LEVELS])
    return float(np.mean([stats.spearmanr(LEVELS, per_level[:, k]).statistic
                          for k in range(len(vi))]))


def test_summary_rho_equals_scipy(outputs):
    summary = outputs.summary
    mean_per_level = [make_scores(lv).mean() for lv in LEVELS]
    expected = stats.spearmanr(LEVELS, mean_per_level).statistic
    assert summary.overall_rho == pytest.approx(expected)
    text = outputs.summary_path.read_text()
    assert f"**{expected:.3f}**" in text
    families = summary.families.set_index("family")
    assert families.loc["DINOv2", "mean_rho"] == pytest.approx(scipy_family_rho(DINO))
    assert families.loc["tiny-cnn", "mean_rho"] == pytest.approx(scipy_family_rho([USER_VISION]))
    assert families.loc["tiny-cnn", "n_sizes"] == 1
    pairs = summary.pairs.set_index(["language_model", "vision_model"])
    series = [make_scores(lv)[1, 2] for lv in LEVELS]
    assert pairs.loc[(LANGUAGE[1], VISION[2]), "rho"] == pytest.approx(
        stats.spearmanr(LEVELS, series).statistic)


def test_slopes_leave_out_the_encoder_and_match_ols(outputs):
    slopes = outputs.summary.slopes
    row = slopes[(slopes["level"] == 30) & (slopes["vision_model"] == DINO[0])].iloc[0]
    assert row["n_language_models"] == 2
    perf = [-float(make_bpb(30, li, False).mean()) for li in (0, 1)]
    expected = stats.linregress(perf, make_scores(30)[:2, 0]).slope
    assert row["slope"] == pytest.approx(expected)
    assert "org/encoder: no bits per byte" in outputs.summary_path.read_text()


def test_bootstrap_is_seeded_and_ordered():
    levels = np.array(LEVELS, dtype=float)
    scores = np.array([[0.5, 0.4, 0.45, 0.2], [0.3, 0.2, 0.1, 0.0]])
    first, second = bootstrap_mean_rho(levels, scores), bootstrap_mean_rho(levels, scores)
    assert first == second
    assert -1 <= first[0] <= first[1] <= 1


def scipy_bootstrap_interval(levels, scores, n_boot, seed):
    """The published percentile interval, by a plain loop: the same level draws, scipy's rho per
    series, replicates with fewer than 3 distinct levels dropped, undefined rhos left out."""
    draws = np.random.default_rng(seed).integers(0, len(levels), size=(n_boot, len(levels)))
    means = []
    for draw in draws:
        if len(set(draw.tolist())) < 3:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on a constant series (rho undefined)
            rhos = [stats.spearmanr(levels[draw], row[draw]).statistic for row in scores]
        rhos = [r for r in rhos if not np.isnan(r)]
        if rhos:
            means.append(np.mean(rhos))
    return np.percentile(means, [2.5, 97.5])


def test_bootstrap_interval_equals_a_plain_scipy_loop_over_the_same_draws():
    levels = np.array([0, 10, 20, 40, 60, 80, 100], dtype=float)
    rng = np.random.default_rng(3)
    scores = np.array([0.6 - 0.002 * levels + 0.05 * rng.standard_normal(7),
                       np.round(0.5 - 0.001 * levels + 0.08 * rng.standard_normal(7), 1),  # ties
                       0.4 + 0.1 * rng.standard_normal(7),
                       [0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4]])  # constant in many draws
    steps = np.array([[0.5] * 6 + [0.3], [0.6] * 5 + [0.2] * 2])  # no rho in many draws
    for series, n_boot, seed in [(scores, 300, 0), (scores, 500, 11), (steps, 400, 5)]:
        interval = bootstrap_mean_rho(levels, series, n_boot=n_boot, seed=seed)
        expected = scipy_bootstrap_interval(levels, series, n_boot, seed)
        assert interval == pytest.approx(tuple(expected), abs=1e-12)
        assert expected[0] < expected[1]


def test_constant_bpb_gives_undefined_slopes(tmp_path):
    levels = [0, 30, 60]
    align, feats = write_study(tmp_path, levels=levels, constant_bpb=True)
    out = plot_study(SPEC, align, feats, tmp_path / "plots", levels=levels, **PNG_ONLY)
    assert out.summary.slopes["slope"].isna().all()
    assert out.summary.families["mean_slope"].isna().all()
    assert "| DINOv2 | 3 |" in out.summary_path.read_text()
    assert "undefined |\n" in out.summary_path.read_text()


def test_an_undefined_score_is_kept_out_of_the_means_and_noted(tmp_path):
    align, feats = write_study(tmp_path, undefined=(30, 1, 2))
    out = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    kept = [(li, vi) for li in range(len(LANGUAGE)) for vi in range(len(VISION)) if (li, vi) != (1, 2)]
    for level, row in zip(LEVELS, out.summary.level_means.itertuples(), strict=True):
        expected = np.mean([make_scores(level)[li, vi] for li, vi in kept])
        assert row.mean_score == pytest.approx(expected, abs=1e-12) and row.n_pairs == len(kept)
    slopes = out.summary.slopes.set_index(["level", "vision_model"])
    assert slopes.loc[(30, VISION[2]), "n_language_models"] == 1  # lm-large left out, encoder has no bpb
    table = pd.read_csv(out.csv)
    cell = table[(table["level"] == 30) & (table["language_model"] == LANGUAGE[1])
                 & (table["vision_model"] == VISION[2])]
    assert cell["score"].isna().all()
    text = out.summary_path.read_text()
    assert f"{LANGUAGE[1]} x {VISION[2]}: undefined score" in text and "level(s) 30" in text


def test_two_levels_give_undefined_rho(tmp_path):
    align, feats = write_study(tmp_path, levels=[0, 100])
    out = plot_study(SPEC, align, feats, tmp_path / "plots", levels=[0, 100], **PNG_ONLY)
    assert math.isnan(out.overall_rho)
    assert out.summary.families["mean_rho"].isna().all()
    assert out.summary.pairs["rho"].isna().all()
    text = out.summary_path.read_text()
    assert "**undefined**, 95% bootstrap CI undefined" in text
    assert all(p.stat().st_size > 0 for p in out.figures)


def test_no_features_dir_skips_performance_plots(study_dirs, tmp_path):
    align, _ = study_dirs
    out = plot_study(SPEC, align, None, tmp_path, levels=[0, 30], **PNG_ONLY)
    assert not [p for p in out.figures if "performance" in p.name]
    assert "no features directory given" in out.summary_path.read_text()


def test_missing_levels_are_listed_in_one_line(study_dirs, tmp_path, capsys):
    align, feats = study_dirs
    with pytest.raises(PlatonicError) as err:
        load_study(SPEC, align, feats, levels=[0, 30, 45, 50])
    message = str(err.value)
    assert "2 of 4 level(s)" in message and "45 (" in message and "50 (" in message
    assert "\n" not in message
    argv = ["--dataset", "toy", "--subset", "s1", "--modelset", "mine", "--topk", "2",
            "--align_dir", align, "--features_dir", feats, "--plot_dir", str(tmp_path),
            "--levels", "0,30,45,50"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(plot_alignment.main, argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_vision_as_x_reads_the_same_study(study_dirs, tmp_path):
    """Results stored vision x language give the same tidy rows, layers swapped back."""
    _, feats = study_dirs
    swapped = StudySpec("toy", "s1", "mine", modality_x="vision", pool_x="cls",
                        modality_y="language", pool_y="avg", metric="mutual_knn", topk=2)
    align = str(tmp_path / "u={}_alignment")
    for level in LEVELS:
        indices = [[(vi, li) for li in range(len(LANGUAGE))] for vi in range(len(VISION))]
        result = AlignmentResult("mutual_knn", 2, VISION, LANGUAGE, make_scores(level).T,
                                 indices, meta={"level": level})
        save_result(swapped.alignment_file(level_dir(align, level)), result)
    frame = load_study(swapped, align, feats, levels=LEVELS).frame
    row = frame[(frame["level"] == 60) & (frame["language_model"] == LANGUAGE[1])
                & (frame["vision_model"] == VISION[2])].iloc[0]
    assert row["score"] == pytest.approx(make_scores(60)[1, 2])
    assert (row["layer_language"], row["layer_vision"]) == (1, 2)
    assert row["bits_per_byte"] == pytest.approx(float(make_bpb(60, 1, False).mean()))


def test_bad_panel_level_and_modalities_are_errors(study_dirs):
    align, feats = study_dirs
    study = load_study(SPEC, align, feats, levels=LEVELS)
    with pytest.raises(PlatonicError, match="panel level"):
        summarise(study, [10])
    with pytest.raises(PlatonicError, match="one language and one vision"):
        StudySpec("toy", "s1", "mine", modality_x="vision", modality_y="vision")


def test_cli_writes_and_prints_where(study_dirs, tmp_path, capsys, monkeypatch):
    align, feats = study_dirs
    monkeypatch.setattr(plots, "Settings", partial(plots.Settings, **PNG_ONLY))
    code = plot_alignment.main(["--dataset", "toy", "--subset", "s1", "--modelset", "mine",
                                "--topk", "2", "--align_dir", align, "--features_dir", feats,
                                "--plot_dir", str(tmp_path), "--levels", "0,30,60",
                                "--panel_levels", "30,60", "--same_scale"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "overall Spearman rho of alignment vs uniqueness" in printed
    folder = tmp_path / "toy" / "s1" / "mine" / (
        "language_pool-avg_prompt-False_vision_pool-cls_prompt-False") / "mutual_knn_k2"
    assert str(folder / "summary.md") in printed
    assert (folder / "alignment_vs_performance_dinov2.png").stat().st_size > 0


def _calibrated_study(root, **study):
    """write_study's results with a hand-made null for every pair (from the score, by formula)."""
    from platonic.io.results import Calibration, load_result

    align, feats = write_study(root, **study)
    for level in LEVELS:
        path = SPEC.alignment_file(level_dir(align, level))
        result = load_result(path, with_grids=True)
        for i in range(len(LANGUAGE)):
            for j in range(len(VISION)):
                score = float(result.scores[i, j])
                mean, p95 = 0.1 + 0.01 * j, 0.15 + 0.01 * j
                result.calibration[(i, j)] = Calibration(
                    score, mean, p95, 0.01 if (i + j) % 2 else 0.2, (score - mean) / (1 - mean),
                    100, score - 0.01, score + 0.01, 10, "test")
        save_result(path, result)
    return align, feats


def test_chance_band_and_summary_sections(tmp_path):
    from matplotlib.collections import PolyCollection

    from platonic.stages.plots import plot_uniqueness

    align, feats = _calibrated_study(tmp_path)
    out = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    text = out.summary_path.read_text()
    # chance table: plain means over the 12 pairs of each level
    for level in LEVELS:
        scores = make_scores(level)
        null_mean = np.mean([0.1 + 0.01 * j for _ in LANGUAGE for j in range(len(VISION))])
        calibrated = np.mean([(scores[i, j] - (0.1 + 0.01 * j)) / (0.9 - 0.01 * j)
                              for i in range(len(LANGUAGE)) for j in range(len(VISION))])
        assert (f"| {level} | {scores.mean():.4f} | {null_mean:.4f} | {null_mean + 0.05:.4f} | "
                f"{calibrated:.4f} | 6 / 12 |") in text
    # slope per level: OLS of score on -bpb over the two causal LMs, for the first DINOv2 size
    section = text.split("## Slope per level")[1].split("##")[0]
    for level in LEVELS:
        perf = [-float(make_bpb(level, li, False).mean()) for li in (0, 1)]
        slope = stats.linregress(perf, make_scores(level)[:2, 0]).slope
        assert f"| {level} | {slope:.3f} |" in section
    assert "rho vs level" in section
    table = pd.read_csv(out.csv)
    assert {"null_mean", "p_value", "calibrated"} <= set(table.columns)
    study = load_study(SPEC, align, feats, LEVELS)
    fig = plot_uniqueness(study, summarise(study), "DINOv2")
    band = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(band) == 1  # null mean 0.10..0.12 -> band from the mean over the 3 sizes
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert np.isclose(ys.min(), 0.11) and np.isclose(ys.max(), 0.16)


def _edit_calibrations(align, level, edit):
    """Replace the calibrations of one level's result by `edit(calibrations)`."""
    from platonic.io.results import load_result

    path = SPEC.alignment_file(level_dir(align, level))
    result = load_result(path, with_grids=True)
    result.calibration = edit(result.calibration)
    save_result(path, result)


def test_chance_table_never_counts_an_undefined_score_and_notes_every_pair_left_out(tmp_path):
    from dataclasses import replace

    align, feats = _calibrated_study(tmp_path, undefined=(30, 0, 2))
    # level 30: the undefined score stored with p = 1 / 101, as results were before an undefined
    # score got an undefined p-value; level 60: one pair's null undefined; level 100: no null.
    _edit_calibrations(align, 30, lambda cal: {**cal, (0, 2): replace(cal[(0, 2)], p_value=1 / 101)})
    _edit_calibrations(align, 60, lambda cal: {**cal, (1, 1): replace(
        cal[(1, 1)], null_mean=math.nan, null_p95=math.nan, p_value=math.nan, calibrated=math.nan)})
    _edit_calibrations(align, 100, lambda cal: {})
    out = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    chance = out.summary.chance.set_index("level")
    assert list(chance.index) == [0, 30, 60]
    assert chance.loc[30, "significant"] == 6 and chance.loc[30, "n_pairs"] == 12  # 6 p = 0.01
    assert chance.loc[60, "significant"] == 6 and chance.loc[60, "n_pairs"] == 11
    text = out.summary_path.read_text()
    assert "| 30 |" in text.split("## Alignment against chance")[1] and "6 / 12 |" in text
    assert (f"{LANGUAGE[1]} x {VISION[1]}: undefined null (a permutation without a finite "
            f"score) at level(s) 60; left out of the chance table") in text
    assert "level(s) 100: measured without --null; no row in the chance table" in text


def test_no_null_no_chance_section(outputs):
    text = outputs.summary_path.read_text()
    assert "against chance" not in text and "null_mean" not in pd.read_csv(outputs.csv).columns


def test_the_plot_stage_leaves_current_outputs_and_redraws_on_any_change(tmp_path):
    """The stage's own rule for "up to date" (the drivers have none): same study table and
    settings, every file there; a changed result, setting or a lost file redraws."""
    align, feats = write_study(tmp_path / "study")
    first = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    made = [*first.figures, first.csv, first.summary_path]
    stamps = {p: p.stat().st_mtime_ns for p in made}
    again = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    assert again.reused and not first.reused
    assert {p: p.stat().st_mtime_ns for p in made} == stamps
    assert [*again.figures, again.csv, again.summary_path] == made
    assert again.describe().splitlines()[0] == f"plots: up to date in {first.folder}"
    assert again.describe().splitlines()[1:] == first.describe().splitlines()
    assert not plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS,
                          same_scale=True, **PNG_ONLY).reused
    first.figures[0].unlink()
    assert not plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY).reused
    result_30 = SPEC.alignment_file(level_dir(align, 30))
    result = load_result(result_30)
    result.scores[0, 0] += 0.1
    save_result(result_30, result)
    redrawn = plot_study(SPEC, align, feats, tmp_path / "plots", levels=LEVELS, **PNG_ONLY)
    assert not redrawn.reused
    assert redrawn.summary.level_means["mean_score"][1] == pytest.approx(
        first.summary.level_means["mean_score"][1] + 0.1 / (len(LANGUAGE) * len(VISION)))
