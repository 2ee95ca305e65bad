"""Readers of the MM-IMDb layout, the one text rule, and a seeded sampler of valid ids.

Layout (the real dataset and the embedded fixture alike):
    ROOT/split.json                {"train"|"dev"|"test": [id, ...]}
    ROOT/dataset/<id>.json         "plot": a list of strings, "genres": capitalised names
    ROOT/dataset/<id>.jpeg         the poster
    ROOT/<split>/sampled_ids.npy   optional: the authors' sampled ids (array of strings)

Rules, the same in every stage:
- the text of a movie is the first `plot` entry with more than one word; a movie with none is
  skipped, and the skips are counted in a one-line note; so is a movie without `genres` (it
  would be a negative for every genre); a split where no movie has a genre among the 23 is an
  error;
- an id listed in split.json (or sampled_ids.npy) without its JSON or JPEG file is an error
  naming the id: the dataset is incomplete, and silently studying a different set is worse;
- a poster that exists but cannot be decoded is skipped and counted like a movie without plot
  (the real dataset has a few broken files); `load_image` on such a file is an error naming it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from platonic.errors import PlatonicError
from platonic.io.fingerprints import texts_fingerprint
from platonic.io.storage import atomic_dir, cache_root, read_json, write_json
from platonic.mmimdb.genres import NUM_GENRES, label_matrix

ROOT_ENV = "MMIMDB_ROOT"
SPLITS: tuple[str, ...] = ("train", "dev", "test")
DEFAULT_NUM_SAMPLES = 1024
SAMPLED_IDS = "sampled_ids.npy"
NO_PLOT, NO_GENRES = "no plot with more than one word", "no genres"


@dataclass(frozen=True)
class Movie:
    """One movie: its id, the text used (first multi-word plot), its raw genres, its poster file."""

    id: str
    text: str
    genres: tuple[str, ...]
    image_path: Path


def fixture_root(seed: int = 0) -> Path:
    """Where the embedded fixture of `seed` lives in the project cache (built on first use)."""
    from platonic.mmimdb.fixture import fixture_fingerprint

    return cache_root() / "mmimdb_fixture" / fixture_fingerprint(seed)


def ensure_fixture(seed: int = 0) -> Path:
    """Build the embedded fixture into the cache unless it is there; atomic (temp dir, rename)."""
    from platonic.mmimdb.fixture import build_fixture

    target = fixture_root(seed)
    if (target / "split.json").exists():
        return target
    with atomic_dir(target, "split.json") as tmp:
        build_fixture(tmp, seed=seed, sampled_ids=False)
    return target


def resolve_root(root: str | os.PathLike | None) -> Path:
    """`--root`, else `$MMIMDB_ROOT`, else the embedded fixture; a one-line error if unusable."""
    return named_root(root) or ensure_fixture()


def named_root(root: str | os.PathLike | None) -> Path | None:
    """`--root`, else `$MMIMDB_ROOT`, checked to be an MM-IMDb folder (a one-line error if not);
    None when neither names one (the embedded fixture, built by `resolve_root`)."""
    chosen = root or os.environ.get(ROOT_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise PlatonicError(f"MM-IMDb root {path} does not exist or is not a directory "
                            f"(--root or ${ROOT_ENV}; see docs/mmimdb.md for the download)")
    if not (path / "split.json").is_file():
        raise PlatonicError(f"{path / 'split.json'} is missing: {path} is not an MM-IMDb root")
    return path


def _json_file(path: Path, missing: str, context: str = "") -> object:
    """A JSON file's content; one-line errors: `missing` if absent, else that it is unreadable."""
    try:
        return read_json(path)
    except FileNotFoundError as err:
        raise PlatonicError(missing) from err
    except (OSError, ValueError) as err:
        raise PlatonicError(f"{context}{path} is not readable JSON: {err}") from err


def read_split(root: Path) -> dict[str, list[str]]:
    """`ROOT/split.json` as split -> list of id strings."""
    path = Path(root) / "split.json"
    data = _json_file(path, f"{path} is missing: {root} is not an MM-IMDb root")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise PlatonicError(f"{path} must be an object of split name -> list of ids")
    return {name: [str(i) for i in ids] for name, ids in data.items()}


def split_ids(root: Path, split: str) -> list[str]:
    """The ids of one split; a one-line error if the split is absent or empty."""
    splits = read_split(root)
    if split not in splits:
        raise PlatonicError(f"split {split!r} is not in {Path(root) / 'split.json'} "
                            f"(it has {', '.join(sorted(splits)) or 'none'})")
    if not splits[split]:
        raise PlatonicError(f"split {split!r} in {Path(root) / 'split.json'} is empty")
    return splits[split]


def plot_text(plot: object) -> str | None:
    """The first entry of a `plot` list with more than one word, or None if there is none."""
    if isinstance(plot, str):
        plot = [plot]
    if not isinstance(plot, list):
        return None
    for entry in plot:
        if isinstance(entry, str) and len(entry.split()) > 1:
            return entry
    return None


def json_path(root: Path, movie_id: str) -> Path:
    return Path(root) / "dataset" / f"{movie_id}.json"


def image_path(root: Path, movie_id: str) -> Path:
    return Path(root) / "dataset" / f"{movie_id}.jpeg"


class UnusableMovie(Exception):
    """A movie the study skips (and counts): `reason` is the note's wording."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_movie(root: Path, movie_id: str) -> Movie:
    """One movie; `UnusableMovie` if it has no multi-word plot or no genres; an error if its
    JSON or JPEG is missing."""
    path = json_path(root, movie_id)
    record = _json_file(path, f"movie {movie_id}: {path} is missing", f"movie {movie_id}: ")
    poster = image_path(root, movie_id)
    if not poster.is_file():
        raise PlatonicError(f"movie {movie_id}: poster {poster} is missing")
    if not isinstance(record, dict):
        raise PlatonicError(f"movie {movie_id}: {path} must hold a JSON object")
    text = plot_text(record.get("plot"))
    if text is None:
        raise UnusableMovie(NO_PLOT)
    genres = record.get("genres")
    if genres is not None and not isinstance(genres, list):
        raise PlatonicError(f"movie {movie_id}: 'genres' in {path} must be a list")
    if not genres:
        raise UnusableMovie(NO_GENRES)
    return Movie(id=str(movie_id), text=text, genres=tuple(str(g) for g in genres), image_path=poster)


def image_readable(path: Path) -> bool:
    """Whether a poster decodes (a full decode: `verify()` misses truncated files)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def load_image(movie: Movie) -> Image.Image:
    """The poster as RGB; an error naming the movie if it cannot be decoded."""
    try:
        with Image.open(movie.image_path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise PlatonicError(f"movie {movie.id}: poster {movie.image_path} is unreadable: {err}") from err


def read_sampled_ids(root: Path, split: str) -> list[str] | None:
    """`ROOT/<split>/sampled_ids.npy` (an array of id strings), or None if there is no such file."""
    path = Path(root) / split / SAMPLED_IDS
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise PlatonicError(f"{path} is not a numpy array of id strings (read without pickle): "
                            f"{str(err).splitlines()[0]}") from err
    if array.ndim != 1 or array.dtype.kind not in "UST":
        raise PlatonicError(f"{path} must be a 1-d array of id strings, not {array.dtype} {array.shape}")
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in array.tolist()]
    if not ids:
        raise PlatonicError(f"{path} is empty")
    return ids


@dataclass
class Selection:
    """The movies one split of the study uses, where they came from, and what was skipped."""

    split: str
    movies: list[Movie]
    seed: int
    source: str  # "sampled_ids.npy" or "sampler"
    requested: int | None
    skipped: Counter = field(default_factory=Counter)
    # the fingerprint of the posters in row order (`fingerprints.images_fingerprint`), recorded
    # for the split whose posters the study encodes; None for the others
    images_sha256: str | None = None

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.movies]

    @property
    def texts_sha256(self) -> str:
        """The fingerprint of the texts in row order, as a language feature file records it."""
        return texts_fingerprint([m.text for m in self.movies])

    def note(self) -> str | None:
        """One line counting the skipped movies, or None if none were skipped."""
        if not self.skipped:
            return None
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"note: {self.split}: skipped {sum(self.skipped.values())} movies ({reasons})"


def _valid_movies(root: Path, ids: Iterable[str], limit: int | None,
                  skipped: Counter) -> list[Movie]:
    movies: list[Movie] = []
    seen: set[str] = set()
    for movie_id in ids:
        if limit is not None and len(movies) >= limit:
            break
        if movie_id in seen:
            skipped["duplicate id"] += 1
            continue
        seen.add(movie_id)
        try:
            movie = read_movie(root, movie_id)
        except UnusableMovie as unusable:
            skipped[unusable.reason] += 1
            continue
        if not image_readable(movie.image_path):
            skipped["unreadable poster"] += 1
        else:
            movies.append(movie)
    return movies


def sample_ids(root: Path, split: str, num_samples: int | None = DEFAULT_NUM_SAMPLES,
               seed: int = 0) -> Selection:
    """`num_samples` unique valid movies of a split, in a seeded random order (all if None).

    The original's sampler stopped after one id (a stray `break`); this one walks a seeded
    permutation of the split until it has `num_samples` movies with a usable plot and poster.
    Fewer valid movies than asked is a one-line note, not an error; none at all is an error.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PlatonicError(f"the sampler's seed must be an integer >= 0, got {seed!r}")
    ids = split_ids(root, split)
    order = np.random.default_rng(seed).permutation(len(ids))
    skipped: Counter = Counter()
    movies = _valid_movies(root, (ids[i] for i in order), num_samples, skipped)
    return _checked(Selection(split, movies, seed, "sampler", num_samples, skipped), root)


def select_ids(root: Path, split: str, num_samples: int | None = DEFAULT_NUM_SAMPLES,
               seed: int = 0) -> Selection:
    """The authors' `sampled_ids.npy` of the split when present (first `num_samples`), else the sampler."""
    sampled = read_sampled_ids(root, split)
    if sampled is None:
        return sample_ids(root, split, num_samples, seed)
    skipped: Counter = Counter()
    movies = _valid_movies(root, sampled, num_samples, skipped)
    return _checked(Selection(split, movies, seed, SAMPLED_IDS, num_samples, skipped), root)


def _checked(selection: Selection, root: Path) -> Selection:
    if not selection.movies:
        raise PlatonicError(f"split {selection.split!r} of {root} has no movie with a usable plot "
                            "and poster")
    if not labels(selection.movies)[0].any():
        raise PlatonicError(f"split {selection.split!r} of {root}: none of its "
                            f"{len(selection.movies)} movies has a genre among the {NUM_GENRES} "
                            "of the study")
    return selection


def shortfall_note(selection: Selection) -> str | None:
    """One line when a split had fewer valid movies than requested."""
    if selection.requested is None or len(selection.movies) >= selection.requested:
        return None
    return (f"note: {selection.split}: {len(selection.movies)} valid movies, fewer than the "
            f"{selection.requested} asked for; using them all")


def selection_record(selection: Selection, root: Path) -> dict:
    """What `save_selection` writes: ids, texts and genres in row order, with the seed, the
    source, the root and (where recorded) the fingerprint of the posters."""
    return {"split": selection.split, "root": str(root), "source": selection.source,
            "seed": selection.seed, "requested": selection.requested,
            "skipped": dict(selection.skipped), "images_sha256": selection.images_sha256,
            "ids": selection.ids,
            "movies": [{"id": m.id, "text": m.text, "genres": list(m.genres)}
                       for m in selection.movies]}


def save_selection(path: str | os.PathLike, selection: Selection, root: Path) -> None:
    """The chosen movies as JSON (never a pickle), so later stages need neither ROOT nor the
    sampler again, and can check that a feature file holds these movies in this order."""
    write_json(path, selection_record(selection, root))


def read_selection(path: str | os.PathLike, root: Path | None = None) -> Selection:
    """A saved selection; posters are looked up under `root` (default: the root it was made from)."""
    try:
        data = read_json(path)
        base = Path(root or data["root"])
        movies = [Movie(str(m["id"]), str(m["text"]), tuple(m["genres"]), image_path(base, m["id"]))
                  for m in data["movies"]]
        selection = Selection(data["split"], movies, int(data["seed"]), data["source"],
                              data["requested"], Counter(data.get("skipped") or {}),
                              data.get("images_sha256"))
    except FileNotFoundError as err:
        raise PlatonicError(f"{path} is missing: run the features stage "
                            "(mmimdb/extract_features.py) first") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PlatonicError(f"{path} is not a readable id selection ({type(err).__name__}: "
                            f"{err})") from err
    if not movies:
        raise PlatonicError(f"{path} holds no movies")
    return selection


def labels(movies: list[Movie]) -> tuple[np.ndarray, Counter]:
    """[N, 23] multi-hot labels (GENRES order) of movies, and the dropped unknown genres."""
    return label_matrix(m.genres for m in movies)

