"""Tests for trainer/download.py against a local fake of the Hugging Face hub.

The fake hub is a threaded stdlib HTTP server on 127.0.0.1 that serves bytes with Range
support and can be told to drop a connection midway, answer errors a few times, ignore Range,
or redirect. Run: `pytest tests/test_download.py -q`.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import download
from trainer.download import (
    DownloadError,
    download_file,
    fetch_climbmix,
    fetch_tinystories,
    hf_url,
    iter_parquet_texts,
    iter_tinystories,
)

FAST = {"backoff": 0.001, "timeout": 5}
BODY = bytes(range(256)) * 1200  # 300 KiB, every offset distinguishable from its neighbours


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) per GET
        self.errors: dict[str, list[tuple[int, dict[str, str]]]] = {}  # answered before the file
        self.drop_after: dict[str, int] = {}  # send this many bytes then hang up, once
        self.redirects: dict[str, str] = {}
        self.ignore_range = False
        self.slice_delay = 0.0  # seconds between 4 KiB writes, to make a download take a while

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-body (as on a size mismatch) is not a test failure


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def do_GET(self) -> None:
        hub = self.server
        hub.requests.append((self.path, dict(self.headers)))
        if self.path in hub.redirects:
            return self._reply(302, {"Location": hub.redirects[self.path]})
        if hub.errors.get(self.path):
            status, headers = hub.errors[self.path].pop(0)
            return self._reply(status, headers)
        body = hub.files.get(self.path)
        if body is None:
            return self._reply(404, {})
        start, rng = 0, self.headers.get("Range")
        if rng and not hub.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                return self._reply(416, {"Content-Range": f"bytes */{len(body)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in hub.drop_after:
            payload = payload[: hub.drop_after.pop(self.path)]
            self.close_connection = True
        for i in range(0, len(payload), 4096):
            self.wfile.write(payload[i : i + 4096])
            time.sleep(hub.slice_delay)

    def _reply(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve() -> Iterator[FakeHub]:
    hub = FakeHub()
    thread = Thread(target=hub.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    yield from _serve()


@pytest.fixture
def other_hub() -> Iterator[FakeHub]:
    yield from _serve()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


def test_complete_download_matches_bytes_and_leaves_no_part(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    dest = download_file(hub.url("/f.bin"), tmp_path / "sub" / "f.bin", **FAST)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "sub" / "f.bin.part").exists()


def test_interrupted_download_resumes_with_range_request(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    hub.drop_after["/f.bin"] = 100_000
    dest = download_file(hub.url("/f.bin"), tmp_path / "f.bin", chunk=8192, **FAST)
    assert dest.read_bytes() == BODY
    (_, first), (_, second) = hub.requests
    assert "Range" not in first
    resumed_at = int(second["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 100_000


def test_server_ignoring_range_restarts_from_zero(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    hub.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 100)
    dest = download_file(hub.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert hub.requests[0][1]["Range"] == "bytes=700-"
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize(
    "status, headers", [(503, {}), (500, {}), (429, {"Retry-After": "0"})], ids=str
)
def test_transient_errors_are_retried_until_success(hub, tmp_path, status, headers):
    hub.files["/f.bin"] = BODY
    hub.errors["/f.bin"] = [(status, headers)] * 2
    dest = download_file(hub.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert dest.read_bytes() == BODY
    assert len(hub.requests) == 3


def test_retry_after_overrides_the_backoff(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    hub.errors["/f.bin"] = [(429, {"Retry-After": "0"})] * 2
    start = time.monotonic()
    download_file(hub.url("/f.bin"), tmp_path / "f.bin", backoff=30, timeout=5)
    assert time.monotonic() - start < 5


def test_gives_up_after_the_retries_are_spent(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    hub.errors["/f.bin"] = [(503, {})] * 10
    with pytest.raises(DownloadError, match="giving up.*3 failed attempts.*503"):
        download_file(hub.url("/f.bin"), tmp_path / "f.bin", retries=2, **FAST)
    assert len(hub.requests) == 3
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_missing_or_forbidden_file_fails_fast_naming_url_and_token(hub, tmp_path, status):
    hub.errors["/gated.bin"] = [(status, {})]
    url = hub.url("/gated.bin")
    with pytest.raises(DownloadError, match=f"HTTP {status}.*{url}.*HF_TOKEN"):
        download_file(url, tmp_path / "gated.bin", **FAST)
    assert len(hub.requests) == 1
    assert not (tmp_path / "gated.bin").exists()
    assert not (tmp_path / "gated.bin.part").exists()


def test_404_discards_a_stale_partial_file(hub, tmp_path):
    (tmp_path / "gone.bin.part").write_bytes(b"half of a file that no longer exists")
    with pytest.raises(DownloadError, match="404"):
        download_file(hub.url("/gone.bin"), tmp_path / "gone.bin", **FAST)
    assert hub.requests[0][1]["Range"] == "bytes=36-"
    assert not (tmp_path / "gone.bin.part").exists()


def test_existing_complete_file_is_not_downloaded_again(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    (tmp_path / "f.bin").write_bytes(b"already here")
    dest = download_file(hub.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert dest.read_bytes() == b"already here"
    assert hub.requests == []


def test_size_different_from_expected_is_an_error(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    with pytest.raises(DownloadError, match="expected"):
        download_file(hub.url("/f.bin"), tmp_path / "f.bin", expected_size=len(BODY) + 1, **FAST)
    assert not (tmp_path / "f.bin").exists()


def test_hf_token_is_sent_but_not_forwarded_to_another_host(hub, other_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    other_hub.files["/cdn/f.bin"] = BODY
    hub.redirects["/f.bin"] = other_hub.url("/cdn/f.bin")
    dest = download_file(hub.url("/f.bin"), tmp_path / "f.bin", **FAST)
    assert dest.read_bytes() == BODY
    assert hub.requests[0][1]["Authorization"] == "Bearer hf_secret"
    assert "Authorization" not in other_hub.requests[0][1]


def test_progress_is_printed_every_tenth_not_every_chunk(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "PROGRESS_MIN_BYTES", 1)
    hub.files["/f.bin"] = BODY
    download_file(hub.url("/f.bin"), tmp_path / "f.bin", chunk=1024, **FAST)
    lines = capsys.readouterr().err.splitlines()
    assert 9 <= len(lines) <= 10  # 300 chunks
    assert lines[-1].startswith("f.bin: 100%")


def _download_after_barrier(barrier, url: str, dest: Path) -> None:
    barrier.wait()
    download_file(url, dest, **FAST)


def test_two_processes_downloading_one_file_share_one_download(hub, tmp_path):
    hub.files["/f.bin"] = BODY
    hub.slice_delay = 0.003  # ~0.25 s per download, so the second process arrives mid-way
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_download_after_barrier, args=(barrier, hub.url("/f.bin"), tmp_path / "f.bin")
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=20)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert len(hub.requests) == 1


def test_hf_url_builds_resolve_urls(monkeypatch):
    assert (
        hf_url("karpathy/climbmix-400b-shuffle", "shard_00000.parquet")
        == "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_00000.parquet"
    )
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hf_url("a/b", "x.txt", revision="refs/pr/1") == (
        "https://mirror.example/datasets/a/b/resolve/refs%2Fpr%2F1/x.txt"
    )
    assert hf_url("a/b", "x.txt", repo_type="model", endpoint="http://h") == (
        "http://h/a/b/resolve/main/x.txt"
    )


def _parquet(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), buf, row_group_size=2)
    return buf.getvalue()


def test_fetch_climbmix_downloads_train_shards_and_pinned_val_shard(hub, tmp_path):
    shards = {0: ["a", "b", "c"], 1: ["d", "e"], 6542: ["val 1", "val 2"]}
    for i, texts in shards.items():
        path = f"/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_{i:05d}.parquet"
        hub.files[path] = _parquet(texts)
    paths = fetch_climbmix(tmp_path, 2, workers=2, endpoint=hub.url(""))
    assert paths == {
        "train": [tmp_path / "shard_00000.parquet", tmp_path / "shard_00001.parquet"],
        "val": [tmp_path / "shard_06542.parquet"],
    }
    assert len(hub.requests) == 3
    assert list(iter_parquet_texts(paths["train"])) == ["a", "b", "c", "d", "e"]
    assert list(iter_parquet_texts(paths["val"])) == ["val 1", "val 2"]


def test_fetch_climbmix_never_trains_on_the_val_shard(tmp_path):
    with pytest.raises(ValueError, match="held out for validation"):
        fetch_climbmix(tmp_path, 6543)


def test_fetch_tinystories_and_split_stories(hub, tmp_path):
    train = "Once upon a time.\n<|endoftext|>\nTom had a dog.\nThe end.\n<|endoftext|>\n"
    base = "/datasets/roneneldan/TinyStories/resolve/main/"
    hub.files[base + "TinyStoriesV2-GPT4-train.txt"] = train.encode()
    hub.files[base + "TinyStoriesV2-GPT4-valid.txt"] = "Zoë sang.<|endoftext|>Bo ran.".encode()
    paths = fetch_tinystories(tmp_path, endpoint=hub.url(""))
    assert paths == {
        "train": tmp_path / "TinyStoriesV2-GPT4-train.txt",
        "val": tmp_path / "TinyStoriesV2-GPT4-valid.txt",
    }
    expected = ["Once upon a time.", "Tom had a dog.\nThe end."]
    assert list(iter_tinystories(paths["train"])) == expected
    assert list(iter_tinystories(paths["train"], block=5)) == expected  # separator split by reads
    assert list(iter_tinystories(paths["val"], block=3)) == ["Zoë sang.", "Bo ran."]
