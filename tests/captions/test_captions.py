"""Stage 1 library: reply checks, file format, sources, the store, retries and the run itself.

Runs against a real chat-completions server on 127.0.0.1 (tests/fake_chat_server.py) with
injected faults; similarities use the offline MiniLM shipped on PyPI.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_chat_server import (
    RETRY_AFTER_SECONDS,
    FakeChatServer,
    image_part_is_jpeg,
    scripted_captions,
)
from PIL import Image

from platonic.captions import sources
from platonic.captions.checks import ReplyProblem, clean_reply, cut_prefixes
from platonic.captions.client import (
    FatalRequestError,
    RateLimiter,
    RequestPolicy,
    resolve_endpoint,
    retry_after_seconds,
)
from platonic.captions.generate import estimate_cost, generate
from platonic.captions.similarity import level_similarities, load_encoder
from platonic.captions.store import ResultStore, failures_path, finished_indices, journal_path
from platonic.errors import PlatonicError
from platonic.io import published_captions as published
from platonic.io.published_captions import CaptionEntry

SECRET = "sk-test-NEVER-PRINT-4f1c2a9e"
FAST = RequestPolicy(model="fake-model", timeout=0.5, max_attempts=5, max_retries=4,
                     backoff=0.01, max_backoff=0.05)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("offline", device="cpu")


def _store(path: Path, encoder) -> ResultStore:
    return ResultStore(path, encoder.similarities, encoder.name)


def _tricky_captions(n: int) -> list[str]:
    """Captions with colons, quotes and line breaks, the kind the original generator cut."""
    return [f'Title {i}: "The Question That Devours"\nYear: 20{i:02d}  Materials: stone, paint'
            for i in range(n)]


def _source(captions: list[str], start: int = 0) -> sources.CaptionSource:
    return sources.CaptionSource("test", {start + i: c for i, c in enumerate(captions)})


def _all_files_text(root: Path) -> str:
    return "".join(p.read_text(encoding="utf-8", errors="replace")
                   for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- reply checks


def test_clean_reply_keeps_captions_whole_and_strips_only_own_labels():
    original = 'Title: "A" here'
    replies = [f'Caption {k} - {10 * k}%: Scene {k}: "quoted": x\nline two' for k in range(1, 11)]
    cleaned = clean_reply(replies, original)
    assert cleaned[0] == 'Scene 1: "quoted": x\nline two'
    assert all(c == f'Scene {k}: "quoted": x\nline two' for k, c in enumerate(cleaned, start=1))


@pytest.mark.parametrize(("captions", "reason"), [
    ([f"c{k}" for k in range(9)], "expected 10 captions, got 9"),
    ([*(f"c{k}" for k in range(9)), " "], "caption 10 is empty"),
    ([*(f"c{k}" for k in range(9)), "C0"], "caption 10 repeats caption 1"),
    ([*(f"c{k}" for k in range(9)), "Title"], "caption 10 looks cut"),
    ([*(f"c{k}" for k in range(9)), 'Title: "A" here'], "caption 10 repeats the original"),
])
def test_clean_reply_rejects_unusable_replies(captions, reason):
    with pytest.raises(ReplyProblem, match=reason):
        clean_reply(captions, 'Title: "A" here')


def test_cut_prefixes_are_the_text_before_each_colon():
    assert cut_prefixes("Sir w:Herbert: x") == {"sir w", "sir w:herbert"}


# ---------------------------------------------------------------- sources


def test_jsonl_and_csv_captions_files(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ["a: b", "c\nd", "e"]) + "\n")
    assert sources.from_file(jsonl, start=1).captions == {1: "c\nd", 2: "e"}
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('id,text\n0,"x: ""y"""\n1,"multi\nline"\n', encoding="utf-8")
    assert sources.from_file(csv_file, num_samples=2).captions == {0: 'x: "y"', 1: "multi\nline"}


def test_prh_style_text_lists_use_caption_idx(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": ["first", "second"]}) + "\n")
    assert sources.from_file(path, caption_idx=1).captions == {0: "second"}


@pytest.mark.parametrize(("name", "content", "message"), [
    ("c.jsonl", '{"text": "ok"}\n{broken\n', "c.jsonl: line 2 is not JSON"),
    ("c.jsonl", '{"text": "ok"}\n{"caption": "x"}\n', "c.jsonl: line 2 has no 'text' field"),
    ("c.jsonl", '{"text": "ok"}\n{"text": "  "}\n', "c.jsonl: row 1 has no caption text"),
    ("c.csv", "caption\nx\n", "needs a 'text' column"),
])
def test_bad_captions_files_name_the_fault(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PlatonicError, match=message):
        sources.from_file(path)


def test_embedded_source_gives_its_level0_captions():
    from platonic.data import embedded

    source = sources.from_embedded(start=2, num_samples=3)
    assert source.captions == {i: embedded.captions(5)[i] for i in (2, 3, 4)}


# ---------------------------------------------------------------- retry helpers


def _status_error(headers: dict) -> SimpleNamespace:
    return SimpleNamespace(response=SimpleNamespace(headers=headers))


def test_retry_after_in_ms_seconds_and_http_date():
    assert retry_after_seconds(_status_error({"retry-after-ms": "1500"})) == 1.5
    assert retry_after_seconds(_status_error({"retry-after": "2"})) == 2.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds(_status_error({"retry-after": date})) <= 31
    assert retry_after_seconds(_status_error({})) is None


def test_rate_limiter_spaces_requests():
    async def four_starts() -> float:
        limiter = RateLimiter(rpm=600)
        start = time.monotonic()
        for _ in range(4):
            await limiter.wait()
        return time.monotonic() - start

    assert asyncio.run(four_starts()) >= 0.29


def test_key_from_dotenv_and_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlatonicError, match="no API key"):
        resolve_endpoint(None)
    assert resolve_endpoint("http://127.0.0.1:1/v1") == ("not-needed", "http://127.0.0.1:1/v1")
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    assert resolve_endpoint(None) == (SECRET, None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert resolve_endpoint(None)[0] == "sk-from-env"


# ---------------------------------------------------------------- the run


def test_50_captions_through_every_fault_come_out_whole(tmp_path, encoder, capsys):
    captions = _tricky_captions(50)
    kinds = ["429", "500", "hang", "drop", "garbage", "malformed", "nine", "empty",
             "duplicate", "refusal", "length"]
    faults = {captions[i]: [kinds[i % len(kinds)]] for i in range(0, 50, 2)}
    faults[captions[1]] = ["500", "nine", "429", "malformed"]
    save = tmp_path / "out" / "data.json"
    with FakeChatServer(faults, hang_seconds=1.5) as server:
        summary = generate(_source(captions), _store(save, encoder), SECRET, server.base_url,
                           FAST, num_workers=4, save_every=7)
    assert (summary.finished, summary.failed) == (50, 0)
    data = json.loads(save.read_text(encoding="utf-8"))
    assert [next(iter(item)) for item in data] == [f"Index - {i}" for i in range(50)]
    for i, item in enumerate(data):
        body = item[f"Index - {i}"]
        assert list(body["sentences"].values()) == [*scripted_captions(captions[i]), captions[i]]
        assert len(body["similarities"]) == 10
        assert all(0.0 < s < 1.0 for s in body["similarities"])
    asked = server.captions_requested()
    for caption in captions:
        assert asked.count(caption) == len(faults.get(caption, [])) + 1
    assert summary.requests_sent == len(asked)
    assert all(r.authorization == f"Bearer {SECRET}" for r in server.requests)
    assert not journal_path(save).exists() and not failures_path(save).exists()
    out, err = capsys.readouterr()
    assert SECRET not in out + err + _all_files_text(tmp_path)


def test_retry_after_is_honoured(tmp_path, encoder):
    captions = _tricky_captions(2)
    with FakeChatServer({captions[0]: ["429"]}) as server:
        generate(_source(captions), _store(tmp_path / "d.json", encoder), SECRET,
                 server.base_url, FAST, num_workers=1)
    first, second = [r.time for r in server.requests if r.caption == captions[0]]
    assert second - first >= RETRY_AFTER_SECONDS - 0.05  # backoff alone would be ~0.01 s


def test_failures_are_listed_then_retried_alone(tmp_path, encoder):
    captions = _tricky_captions(6)
    faults = {captions[1]: ["nine"] * 5, captions[2]: ["500"] * 5, captions[3]: ["400"]}
    save = tmp_path / "data.json"
    with FakeChatServer(faults) as server:
        first = generate(_source(captions), _store(save, encoder), SECRET, server.base_url,
                         FAST, num_workers=3)
        mark = len(server.requests)
        failures = json.loads(failures_path(save).read_text(encoding="utf-8"))
        second = generate(_source(captions), _store(save, encoder), SECRET, server.base_url,
                          FAST, num_workers=3)
        asked_again = server.captions_requested(since=mark)
    assert (first.finished, first.failed) == (3, 3)
    reasons = {f["index"]: f["reason"] for f in failures}
    assert "expected 10 captions, got 9 (after 5 replies)" in reasons[1]
    assert "gave up after 5 transport faults, the last: HTTP 500" in reasons[2]
    assert "server rejected the request (HTTP 400)" in reasons[3]
    assert next(f for f in failures if f["index"] == 1)["last_reply"].startswith("{")
    assert sorted(asked_again) == sorted(captions[1:4])
    assert (second.finished, second.failed, second.already_done) == (3, 0, 3)
    assert set(published.read(save)) == set(range(6)) and not failures_path(save).exists()


def test_refused_key_stops_the_run_and_keeps_finished_work(tmp_path, encoder):
    captions = _tricky_captions(4)
    save = tmp_path / "data.json"
    with FakeChatServer({captions[2]: ["401"]}) as server, \
            pytest.raises(FatalRequestError, match="refused the API key"):
        generate(_source(captions), _store(save, encoder), SECRET, server.base_url, FAST,
                 num_workers=1)
    assert set(published.read(save)) == {0, 1}


def test_journal_is_the_record_between_batches(tmp_path, encoder):
    """Replies journalled but not yet in the output are folded in and never asked again."""
    captions = _tricky_captions(5)
    save = tmp_path / "data.json"
    lines = [json.dumps({"index": i, "original": captions[i],
                         "captions": scripted_captions(captions[i])}) for i in (0, 3)]
    journal_path(save).write_text("\n".join(lines) + '\n{"index": 4, "orig', encoding="utf-8")
    assert finished_indices(save) == {0, 3}
    with FakeChatServer() as server:
        summary = generate(_source(captions), _store(save, encoder), SECRET, server.base_url,
                           FAST, num_workers=2)
    assert sorted(server.captions_requested()) == sorted(captions[i] for i in (1, 2, 4))
    assert summary.already_done == 2 and set(published.read(save)) == set(range(5))


def test_torn_line_inside_the_journal_is_an_error(tmp_path, encoder):
    save = tmp_path / "data.json"
    journal_path(save).write_text('{"index": 0\n{"index": 1}\n', encoding="utf-8")
    with pytest.raises(PlatonicError, match="data.json.journal: line 1"):
        _store(save, encoder).open({0: "a"})


def test_another_input_on_the_same_output_is_refused(tmp_path, encoder):
    captions = _tricky_captions(2)
    save = tmp_path / "data.json"
    with FakeChatServer() as server:
        generate(_source(captions), _store(save, encoder), SECRET, server.base_url, FAST)
        with pytest.raises(PlatonicError, match="index 1 holds another original caption"):
            generate(_source([captions[0], "y"]), _store(save, encoder), SECRET,
                     server.base_url, FAST)
        forced = generate(_source([captions[0], "y"]), _store(save, encoder), SECRET,
                          server.base_url, FAST, force=True)
    assert forced.finished == 2 and server.captions_requested().count(captions[0]) == 2
    assert [e.original for e in published.read(save).values()] == [captions[0], "y"]


def test_start_keeps_source_indices_and_merges(tmp_path, encoder):
    captions = _tricky_captions(4)
    save = tmp_path / "data.json"
    with FakeChatServer() as server:
        generate(_source(captions[2:], start=2), _store(save, encoder), SECRET, server.base_url,
                 FAST)
        generate(_source(captions[:2]), _store(save, encoder), SECRET, server.base_url, FAST)
    entries = published.read(save)
    assert list(entries) == [0, 1, 2, 3]
    assert [e.original for e in entries.values()] == captions


def test_images_are_sent_as_base64_jpeg_parts(tmp_path, encoder):
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "A red square.", "image": "red.png"}))
    source = sources.from_file(tmp_path / "c.jsonl", with_images=True)
    with FakeChatServer() as server:
        generate(source, _store(tmp_path / "d.json", encoder), SECRET, server.base_url, FAST)
    assert len(server.requests) == 1 and image_part_is_jpeg(server.requests[0].body)


def test_unreadable_image_is_a_one_line_error_naming_the_row(tmp_path, encoder):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "A red square.", "image": "bad.png"}))
    source = sources.from_file(tmp_path / "c.jsonl", with_images=True)
    with FakeChatServer() as server, pytest.raises(PlatonicError, match="row 0: cannot read image"):
        generate(source, _store(tmp_path / "d.json", encoder), SECRET, server.base_url, FAST)
    assert server.requests == []


def test_cost_estimate_counts_only_what_is_left():
    cost = estimate_cost(_source(["a caption of some length"] * 4), done={0})
    assert (cost.requests, cost.already_done) == (3, 1)
    assert cost.input_tokens > 3 * 100 and cost.output_tokens > 3 * 10


def test_default_similarity_model_falls_back_with_a_note(tmp_path, monkeypatch):
    from platonic.captions import similarity

    unreachable = str(tmp_path / "no-such-model")
    with pytest.raises(PlatonicError, match="cannot load sentence-transformers model"):
        similarity.load_encoder(unreachable, device="cpu")
    monkeypatch.setattr(similarity, "DEFAULT_MODEL", unreachable)
    notes: list[str] = []
    fallback = similarity.load_encoder(unreachable, device="cpu", note=notes.append)
    assert len(notes) == 1 and "offline all-MiniLM-L6-v2" in notes[0]
    assert fallback.name == "offline" and fallback.model.encode(["a cat"]).shape == (1, 384)


def test_similarities_are_cosines_of_the_right_pairs(encoder):
    sims = level_similarities(encoder.model, ["a cat on a mat", "stock prices fell"],
                              [["a cat on a rug"] * 10, ["a cat on a rug"] * 10])
    assert len(sims) == 2 and all(len(row) == 10 for row in sims)
    assert sims[0][0] > sims[1][0] + 0.3
    assert all(math.isfinite(s) and -1 <= s <= 1 for row in sims for s in row)


# ---------------------------------------------------------------- nothing lost, nothing mixed


def _fake_similarity(originals, rewrites):
    """A stand-in encoder: similarities that say which caption and level they belong to."""
    return [[len(o) / 1000 + k / 100 for k in range(len(r))] for o, r in zip(originals, rewrites, strict=True)]


def _old_entries(captions: list[str], model: str) -> dict[int, CaptionEntry]:
    return {i: CaptionEntry(i, c, tuple(f"old {i}.{k}" for k in range(1, 11)), (0.5,) * 10, model)
            for i, c in enumerate(captions)}


def test_each_finished_record_is_journaled_at_once_and_reread(tmp_path):
    captions = _tricky_captions(4)
    save = tmp_path / "data.json"
    store = ResultStore(save, _fake_similarity, "fake-encoder")
    store.open(dict(enumerate(captions)))
    replies = {i: tuple(scripted_captions(captions[i])) for i in (2, 0, 3)}
    for done, (index, reply) in enumerate(replies.items(), start=1):
        store.record(index, captions[index], reply)
        assert finished_indices(save) == set(list(replies)[:done])  # durable before the next
    assert not save.exists()  # killed now: the journal alone holds the three replies
    again = ResultStore(save, _fake_similarity, "fake-encoder")
    again.open(dict(enumerate(captions)))
    entries = published.read(save)
    assert sorted(entries) == [0, 2, 3] and not journal_path(save).exists()
    for index, reply in replies.items():
        assert entries[index] == CaptionEntry(index, captions[index], reply,
                                              tuple(_fake_similarity([captions[index]], [reply])[0]),
                                              "fake-encoder")
    assert [i for i in range(4) if not again.is_done(i)] == [1]


def test_force_keeps_old_captions_until_their_replacements_are_saved(tmp_path, encoder):
    captions = _tricky_captions(4)
    save = tmp_path / "data.json"
    old = _old_entries(captions, encoder.name)
    published.write(save, old)
    before = save.read_bytes()
    with FakeChatServer({captions[0]: ["401"]}) as server, pytest.raises(FatalRequestError):
        generate(_source(captions), _store(save, encoder), SECRET, server.base_url, FAST,
                 num_workers=1, force=True)
    assert save.read_bytes() == before  # a refused key replaced nothing, so nothing is gone
    faults = {captions[1]: ["500"] * 5, captions[2]: ["401"]}
    with FakeChatServer(faults) as server:
        with pytest.raises(FatalRequestError):
            generate(_source(captions), _store(save, encoder), SECRET, server.base_url, FAST,
                     num_workers=1, force=True)
        entries = published.read(save)
        assert entries[0].captions == tuple(scripted_captions(captions[0]))  # replaced
        assert entries[1] == old[1]  # its replacement failed: the old one stays
        assert (entries[2], entries[3]) == (old[2], old[3])  # the run stopped before them
        assert [f["index"] for f in json.loads(failures_path(save).read_text())] == [1]
        mark = len(server.requests)
        retry = generate(_source(captions), _store(save, encoder), SECRET, server.base_url, FAST)
        assert server.captions_requested(since=mark) == [captions[1]]  # the failed one, again
    assert (retry.finished, retry.failed) == (1, 0) and not failures_path(save).exists()
    assert published.read(save)[1].captions == tuple(scripted_captions(captions[1]))


def test_journaled_replacement_wins_over_the_older_output(tmp_path):
    """Killed after journaling a forced replacement, before the output was rewritten."""
    captions = _tricky_captions(3)
    save = tmp_path / "data.json"
    published.write(save, _old_entries(captions, "fake-encoder"))
    new = scripted_captions(captions[1])
    journal_path(save).write_text(json.dumps({"index": 1, "original": captions[1],
                                              "captions": new}) + "\n", encoding="utf-8")
    assert finished_indices(save) == {0, 1, 2}
    ResultStore(save, _fake_similarity, "fake-encoder").open(dict(enumerate(captions)))
    entries = published.read(save)
    assert entries[1].captions == tuple(new) and entries[0].captions[0] == "old 0.1"


def test_similarities_of_another_encoder_are_refused_and_recorded(tmp_path):
    captions = _tricky_captions(3)
    save = tmp_path / "data.json"
    store = ResultStore(save, _fake_similarity, "model-a")
    store.open({0: captions[0]})
    store.record(0, captions[0], tuple(scripted_captions(captions[0])))
    store.close()
    body = json.loads(save.read_text(encoding="utf-8"))[0]["Index - 0"]
    assert body["similarity_model"] == "model-a"
    assert [k for k in body["sentences"] if "- 30%" in k] == ["Caption 3 - 30%"]  # the original's lookup
    before = save.read_bytes()
    other = ResultStore(save, _fake_similarity, "model-b")
    with pytest.raises(PlatonicError, match="index 0 has similarities from 'model-a', this run "
                                            "computes them with 'model-b'; rerun with --sim_model "
                                            "model-a, or --force"):
        other.open(dict(enumerate(captions)))
    assert save.read_bytes() == before
    forced = ResultStore(save, _fake_similarity, "model-b")
    forced.open(dict(enumerate(captions)), force=True)  # every kept entry will be redone
    assert not any(forced.is_done(i) for i in range(3))


def test_published_entries_count_as_the_published_encoder(tmp_path):
    """The published file records no encoder: its similarities are paraphrase-MiniLM-L6-v2's."""
    from platonic.captions.similarity import DEFAULT_MODEL

    captions = _tricky_captions(2)
    save = tmp_path / "data.json"
    published.write(save, _old_entries(captions, model=None))
    assert "similarity_model" not in save.read_text(encoding="utf-8")
    ResultStore(save, _fake_similarity, DEFAULT_MODEL).open({0: captions[0], 2: "new"})
    with pytest.raises(PlatonicError, match="from 'sentence-transformers/paraphrase-MiniLM-L6-v2', "
                                            "this run computes them with 'offline'"):
        ResultStore(save, _fake_similarity, "offline").open({2: "new"})
