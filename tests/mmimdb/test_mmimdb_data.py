"""MM-IMDb data: genre order, labels, the reader rules, the sampler and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from platonic.errors import PlatonicError
from platonic.mmimdb import dataset as ds
from platonic.mmimdb import genres as G
from platonic.mmimdb.fixture import build_fixture

SMALL = {"train": 60, "dev": 20, "test": 40}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("mmimdb"), seed=3, split_sizes=SMALL,
                         single_word_rate=0.3, no_plot_rate=0.1, unknown_genre_rate=0.2)


def copy_root(root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_published_genre_order_and_columns():
    published = ["drama", "comedy", "romance", "thriller", "crime", "action", "adventure", "horror", "documentary", "mystery", "sci-fi", "music", "fantasy", "family", "biography", "war", "history", "animation", "musical", "western", "sport", "short", "film-noir"]
    assert list(G.GENRES) == published
    row = G.multi_hot(["Sci-Fi", "Drama", "Film-Noir"])
    assert row.shape == (23,)
    assert np.flatnonzero(row).tolist() == [published.index("drama"), published.index("sci-fi"),
                                            published.index("film-noir")]


def test_unknown_genres_dropped_and_counted():
    matrix, unknown = G.label_matrix([["News", "Comedy"], ["news", "Talk-Show"], []])
    assert matrix.sum(axis=1).tolist() == [1, 0, 0]
    assert unknown == {"news": 2, "talk-show": 1}
    assert "3 genre labels" in G.unknown_note(unknown)
    assert G.unknown_note(unknown).count("\n") == 0


def test_binary_label_uses_published_order():
    assert G.binary_label(["Western"], 19) == 1  # 19 is western, not sport (the original's bug)
    assert G.binary_label(["Sport"], 19) == 0
    assert G.binary_label(["Sport"], 20) == 1


@pytest.mark.parametrize("bad", [-1, 23, 2.0, True, "3"])
def test_class_idx_out_of_range_is_one_line(bad):
    with pytest.raises(PlatonicError) as err:
        G.check_class_idx(bad)
    assert "\n" not in str(err.value) and "0..22" in str(err.value)


def test_genre_list_validator():
    assert G.check_genres(["Sci-Fi", "DRAMA"]) == ["sci-fi", "drama"]
    with pytest.raises(PlatonicError, match="unknown genres 'Scifi', 'News'"):
        G.check_genres(["Scifi", "comedy", "News"])


def test_original_plot_titles_map_alphabetical_columns():
    titles = G.original_plot_titles()
    # column 0 of the sorted binarizer is action, titled with genres_[0] = drama
    assert titles["drama"] == "action"
    assert titles["western"] == "sport"  # column 19
    assert sorted(titles.values()) == sorted(G.GENRES)


def test_fixture_layout_matches_real_dataset(root):
    split = json.loads((root / "split.json").read_text())
    assert set(split) == {"train", "dev", "test"}
    assert {k: len(v) for k, v in split.items()} == SMALL
    ids = [i for v in split.values() for i in v]
    assert len(set(ids)) == len(ids) and all(len(i) == 7 and i.isdigit() for i in ids)
    record = json.loads((root / "dataset" / f"{ids[0]}.json").read_text())
    assert isinstance(record["plot"], list) and isinstance(record["genres"], list)
    with Image.open(root / "dataset" / f"{ids[0]}.jpeg") as image:
        assert image.format == "JPEG" and max(image.size) <= 96
    train_genres = set()
    for movie_id in split["train"]:
        train_genres |= {G.normalise(g) for g in json.loads((root / "dataset" / f"{movie_id}.json")
                                                            .read_text())["genres"]}
    assert set(G.GENRES) <= train_genres and "news" in train_genres


def test_fixture_is_deterministic(tmp_path):
    a = build_fixture(tmp_path / "a", seed=5, split_sizes={"train": 30, "dev": 5, "test": 5})
    b = build_fixture(tmp_path / "b", seed=5, split_sizes={"train": 30, "dev": 5, "test": 5})
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_text_is_first_multi_word_plot():
    assert ds.plot_text(["TBA", "A man walks.", "Second plot here."]) == "A man walks."
    assert ds.plot_text(["Unknown."]) is None
    assert ds.plot_text([]) is None


def test_sampler_gives_unique_valid_ids(root):
    split = json.loads((root / "split.json").read_text())
    valid = [i for i in split["train"]
             if ds.plot_text(json.loads((root / "dataset" / f"{i}.json").read_text())["plot"])]
    assert len(valid) < len(split["train"])  # the fixture has movies without a usable plot
    selection = ds.sample_ids(root, "train", num_samples=25, seed=1)
    assert len(selection.ids) == 25 and len(set(selection.ids)) == 25
    assert set(selection.ids) <= set(valid)
    assert ds.sample_ids(root, "train", 25, seed=1).ids == selection.ids
    assert ds.sample_ids(root, "train", 25, seed=2).ids != selection.ids
    everything = ds.sample_ids(root, "train", num_samples=None, seed=1)
    assert sorted(everything.ids) == sorted(valid)
    assert everything.note() == (f"note: train: skipped {len(split['train']) - len(valid)} movies "
                                 f"({len(split['train']) - len(valid)} no plot with more than one word)")
    assert ds.shortfall_note(ds.sample_ids(root, "test", 10_000)) is not None


def test_selection_saved_as_json_and_reread(root, tmp_path):
    selection = ds.sample_ids(root, "dev", 8, seed=4)
    ds.save_selection(tmp_path / "dev.json", selection, root)
    saved = json.loads((tmp_path / "dev.json").read_text())
    assert saved["seed"] == 4 and saved["source"] == "sampler" and saved["ids"] == selection.ids
    again = ds.read_selection(tmp_path / "dev.json")
    assert again.movies == selection.movies  # texts, genres and poster paths, in row order
    assert "mmimdb/extract_features.py" in one_line_error(
        lambda: ds.read_selection(tmp_path / "absent.json"))


def test_sampled_ids_npy_is_used(root, tmp_path):
    copy = copy_root(root, tmp_path)
    chosen = ds.sample_ids(copy, "test", 6, seed=9).ids[::-1]
    (copy / "test").mkdir()
    np.save(copy / "test" / "sampled_ids.npy", np.array(chosen))
    selection = ds.select_ids(copy, "test", 1024)
    assert selection.ids == chosen and selection.source == "sampled_ids.npy"
    np.save(copy / "test" / "sampled_ids.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(PlatonicError, match="without pickle"):
        ds.select_ids(copy, "test", 1024)


def test_labels_in_genre_order(root):
    movie = next(m for m in ds.sample_ids(root, "train", None).movies if len(m.genres) > 1)
    matrix, _ = ds.labels([movie])
    expected = [G.GENRES.index(g.lower()) for g in movie.genres if g.lower() in G.GENRES]
    assert np.flatnonzero(matrix[0]).tolist() == sorted(expected)


def one_line_error(call) -> str:
    with pytest.raises(PlatonicError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_root_and_split_json(tmp_path, monkeypatch):
    monkeypatch.delenv(ds.ROOT_ENV, raising=False)
    assert "does not exist" in one_line_error(lambda: ds.resolve_root(str(tmp_path / "nope")))
    assert "split.json is missing" in one_line_error(lambda: ds.resolve_root(str(tmp_path)))
    monkeypatch.setenv(ds.ROOT_ENV, str(tmp_path / "env"))
    assert str(tmp_path / "env") in one_line_error(lambda: ds.resolve_root(None))


def test_missing_files_name_the_id(root, tmp_path):
    copy = copy_root(root, tmp_path)
    victim = ds.sample_ids(copy, "test", None).ids[0]
    (copy / "dataset" / f"{victim}.jpeg").unlink()
    message = one_line_error(lambda: ds.sample_ids(copy, "test", None))
    assert victim in message and "poster" in message
    (copy / "dataset" / f"{victim}.json").unlink()
    assert f"movie {victim}" in one_line_error(lambda: ds.sample_ids(copy, "test", None))


def test_unreadable_jpeg_is_skipped_and_counted(root, tmp_path):
    copy = copy_root(root, tmp_path)
    victim = ds.sample_ids(copy, "dev", None).ids[0]
    (copy / "dataset" / f"{victim}.jpeg").write_bytes(b"not a jpeg")
    selection = ds.sample_ids(copy, "dev", None)
    assert victim not in selection.ids and selection.skipped["unreadable poster"] == 1
    movie = ds.read_movie(copy, victim)
    assert victim in one_line_error(lambda: ds.load_image(movie))


def test_empty_or_absent_split(root, tmp_path):
    copy = copy_root(root, tmp_path)
    split = json.loads((copy / "split.json").read_text())
    split["dev"] = []
    (copy / "split.json").write_text(json.dumps(split))
    assert "'dev'" in one_line_error(lambda: ds.sample_ids(copy, "dev", 5))
    assert "'val'" in one_line_error(lambda: ds.sample_ids(copy, "val", 5))


def test_default_root_is_the_cached_fixture(tmp_path, monkeypatch):
    monkeypatch.delenv(ds.ROOT_ENV, raising=False)
    monkeypatch.setenv("PLATONIC_CACHE", str(tmp_path))
    monkeypatch.setattr("platonic.mmimdb.fixture.SPLIT_SIZES", {"train": 30, "dev": 5, "test": 5})
    root = ds.resolve_root(None)
    assert root.is_relative_to(tmp_path) and (root / "split.json").is_file()
    stamp = (root / "split.json").stat().st_mtime_ns
    assert ds.resolve_root(None) == root and (root / "split.json").stat().st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]


def _edit_movie(root: Path, movie_id: str, **changes) -> None:
    path = root / "dataset" / f"{movie_id}.json"
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    path.write_text(json.dumps(record))


def test_movie_without_genres_is_skipped_and_counted(root, tmp_path):
    copy = copy_root(root, tmp_path)
    first, second = ds.sample_ids(copy, "dev", None).ids[:2]
    _edit_movie(copy, first, genres=None)  # no "genres" key
    _edit_movie(copy, second, genres=[])
    selection = ds.sample_ids(copy, "dev", None)
    assert first not in selection.ids and second not in selection.ids
    assert selection.skipped[ds.NO_GENRES] == 2 and "2 no genres" in selection.note()
    assert all(m.genres for m in selection.movies)


def test_split_without_a_known_genre_is_an_error(root, tmp_path):
    copy = copy_root(root, tmp_path)
    for movie_id in json.loads((copy / "split.json").read_text())["dev"]:
        _edit_movie(copy, movie_id, genres=["News"])
    message = one_line_error(lambda: ds.sample_ids(copy, "dev", None))
    assert "'dev'" in message and "none of its" in message and "23" in message
    assert ds.sample_ids(copy, "test", None).movies  # the other splits are fine


def test_negative_sampler_seed_is_one_line(root):
    assert "seed" in one_line_error(lambda: ds.sample_ids(root, "dev", 5, seed=-1))
