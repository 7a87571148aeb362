"""Download the trainer's remote datasets from the Hugging Face hub, robustly.

`download_file` fetches one URL to a local path with the habits a flaky network needs:
resume with HTTP Range, retry with exponential backoff (honouring Retry-After), fail fast on
404/401/403, verify the size, rename atomically, and take a cross-process file lock so several
workers on one node share one download. The dataset fetchers build on it:

    from trainer.download import fetch_climbmix, iter_parquet_texts
    paths = fetch_climbmix(Path("~/.cache/autoresearch/climbmix").expanduser(), num_shards=8)
    for text in iter_parquet_texts(paths["val"]): ...

Set HF_TOKEN for gated repos and HF_ENDPOINT for a mirror. Standard library HTTP only
(urllib), so nothing beyond filelock and pyarrow is needed. Tested against a local HTTP
server: `pytest tests/test_download.py -q`.
"""

from __future__ import annotations

import email.utils
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from filelock import FileLock

HF_ENDPOINT = "https://huggingface.co"
TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}
TINYSTORIES_SEPARATOR = "<|endoftext|>"
CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_MAX_SHARD = 6542  # shard_06542.parquet is the pinned val shard; training never sees it
MAX_BACKOFF_S = 60.0  # cap on one exponential-backoff sleep
MAX_RETRY_AFTER_S = 300.0  # cap on a server's Retry-After, so a bad header cannot stall a run
PROGRESS_MIN_BYTES = 32 << 20  # smaller files download silently
USER_AGENT = "autoresearch-cluster (urllib)"

_FATAL_HINT = {
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
}


class DownloadError(RuntimeError):
    """A download that cannot succeed (bad URL, no access) or that ran out of retries."""


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may fix."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _AuthStrippingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never send the HF token to another host (the hub redirects
    file downloads to a CDN with a signed URL, which rejects a second credential)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != (
            urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_AuthStrippingRedirects)


def hf_url(
    repo_id: str,
    filename: str,
    *,
    revision: str = "main",
    repo_type: str = "dataset",
    endpoint: str | None = None,
) -> str:
    """The hub's download URL for one file of a repo (datasets by default)."""
    base = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    prefix = {"dataset": "datasets/", "space": "spaces/", "model": ""}[repo_type]
    rev = urllib.parse.quote(revision, safe="")
    return f"{base}/{prefix}{repo_id}/resolve/{rev}/{urllib.parse.quote(filename)}"


def download_file(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    timeout: float = 60,
    backoff: float = 2.0,
    chunk: int = 1 << 20,
    expected_size: int | None = None,
    headers: dict[str, str] | None = None,
) -> Path:
    """Download `url` to `dest` and return `dest`; a complete `dest` is returned untouched.

    Bytes go to `dest.part` first and are renamed into place only once their size matches the
    server's (and `expected_size`, when given). `retries` counts consecutive failed attempts;
    an attempt that received bytes resets the count, since the next one resumes from there.
    """
    dest = Path(dest)
    if _is_complete(dest, expected_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _is_complete(dest, expected_size):  # another process finished it while we waited
            return dest
        part = dest.with_suffix(dest.suffix + ".part")
        req_headers = {"User-Agent": USER_AGENT}
        if os.environ.get("HF_TOKEN"):
            req_headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
        req_headers.update(headers or {})
        failures = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _attempt(url, part, req_headers, timeout, chunk, expected_size)
                break
            except _Retryable as err:
                if part.exists() and part.stat().st_size > before:
                    failures = 0
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"giving up on {url} after {failures} failed attempts: {err}"
                    ) from None
                delay = err.retry_after
                if delay is None:
                    delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
                print(f"download {url}: {err}; retrying in {delay:.1f}s", file=sys.stderr)
                time.sleep(delay)
        os.replace(part, dest)
    return dest


def _is_complete(dest: Path, expected_size: int | None) -> bool:
    # dest only ever appears by renaming a verified .part, so existing means complete.
    return dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size)


def _attempt(
    url: str,
    part: Path,
    headers: dict[str, str],
    timeout: float,
    chunk: int,
    expected_size: int | None,
) -> None:
    """One request: append to `part` until the file is whole, or raise."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have == expected_size:
        return
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers=headers)
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        _raise_for_status(url, err, part, have)
        return  # 416 for a .part that already holds the whole file
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Retryable(f"connection failed: {err}") from None
    with resp:
        if resp.status == 206:
            if _content_range_start(resp) != have:
                part.unlink()  # the next attempt asks for the whole file
                raise _Retryable(f"server sent the wrong range for bytes={have}-")
            total = _content_range_total(resp)
            mode = "ab"
        else:  # 200: the server ignored the Range header, so start over from byte zero
            have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"{url} is {total} bytes on the server but {expected_size} were expected; "
                "the file changed upstream, so check the dataset revision"
            )
        total = total if total is not None else expected_size
        progress = _Progress(part.name.removesuffix(".part"), total, have)
        with open(part, mode) as f:
            while True:
                try:
                    data = resp.read(chunk)
                except (OSError, http.client.HTTPException) as err:
                    raise _Retryable(f"connection lost after {have} bytes: {err}") from None
                if not data:
                    break
                f.write(data)
                have += len(data)
                progress.update(have)
    if total is not None and have < total:
        raise _Retryable(f"connection closed after {have} of {total} bytes")
    if total is not None and have > total:
        part.unlink()
        raise _Retryable(f"received {have} bytes, more than the {total} announced")


def _raise_for_status(url: str, err: urllib.error.HTTPError, part: Path, have: int) -> None:
    code = err.code
    err.close()
    if code == 416 and have:
        # Range not satisfiable: the .part is already whole, or longer than the file.
        total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
        if total.isdigit() and int(total) == have:
            return
        part.unlink()
        raise _Retryable(f"partial file of {have} bytes does not fit the remote file")
    if code == 429 or code >= 500:
        raise _Retryable(f"HTTP {code}", _retry_after(err.headers.get("Retry-After")))
    if code == 404:
        part.unlink(missing_ok=True)  # a partial of a file that no longer exists is garbage
    raise DownloadError(
        f"HTTP {code} ({_FATAL_HINT.get(code, err.reason)}) for {url}; check the dataset "
        "name and revision, and for gated repos set HF_TOKEN to a token with access"
    ) from None


def _content_range_start(resp: http.client.HTTPResponse) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    start = value.removeprefix("bytes ").partition("-")[0]
    return int(start) if start.isdigit() else None


def _content_range_total(resp: http.client.HTTPResponse) -> int | None:
    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - time.time(), 0.0), MAX_RETRY_AFTER_S)


class _Progress:
    """Prints a line on stderr at every 10% of a big file, not on every chunk."""

    def __init__(self, name: str, total: int | None, have: int):
        self.name = name
        self.total = total if total and total >= PROGRESS_MIN_BYTES else None
        self.next_tenth = (have * 10 // self.total + 1) if self.total else 11

    def update(self, have: int) -> None:
        if self.total is None or have * 10 < self.next_tenth * self.total:
            return
        self.next_tenth = have * 10 // self.total + 1
        print(
            f"{self.name}: {100 * have // self.total}% "
            f"({have / 1e6:.0f}/{self.total / 1e6:.0f} MB)",
            file=sys.stderr,
            flush=True,
        )


def fetch_tinystories(
    dest_dir: Path,
    *,
    repo_id: str = TINYSTORIES_REPO,
    revision: str = "main",
    endpoint: str | None = None,
) -> dict[str, Path]:
    """Download TinyStories V2 (GPT-4 stories) into `dest_dir`: {"train": path, "val": path}."""
    dest_dir = Path(dest_dir)
    return {
        split: download_file(
            hf_url(repo_id, name, revision=revision, endpoint=endpoint), dest_dir / name
        )
        for split, name in TINYSTORIES_FILES.items()
    }


def iter_tinystories(path: Path, *, block: int = 1 << 20) -> Iterator[str]:
    """Yield the stories of a TinyStories text file, reading `block` characters at a time."""
    pending = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        while text := f.read(block):
            *stories, pending = (pending + text).split(TINYSTORIES_SEPARATOR)
            yield from (s.strip() for s in stories if s.strip())
    if pending.strip():
        yield pending.strip()


def climbmix_shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def fetch_climbmix(
    dest_dir: Path,
    num_shards: int,
    *,
    workers: int = 8,
    repo_id: str = CLIMBMIX_REPO,
    revision: str = "main",
    endpoint: str | None = None,
) -> dict[str, list[Path]]:
    """Download ClimbMix train shards 0..num_shards-1 and the pinned val shard, in parallel.

    Returns {"train": [paths in shard order], "val": [path of shard CLIMBMIX_MAX_SHARD]}.
    """
    if not 1 <= num_shards <= CLIMBMIX_MAX_SHARD:
        raise ValueError(
            f"num_shards must be between 1 and {CLIMBMIX_MAX_SHARD} (shard "
            f"{CLIMBMIX_MAX_SHARD} is held out for validation), got {num_shards}"
        )
    dest_dir = Path(dest_dir)
    indices = [*range(num_shards), CLIMBMIX_MAX_SHARD]

    def fetch(index: int) -> Path:
        name = climbmix_shard_name(index)
        url = hf_url(repo_id, name, revision=revision, endpoint=endpoint)
        return download_file(url, dest_dir / name)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = [pool.submit(fetch, i) for i in indices]
    try:
        for future in as_completed(futures):
            future.result()  # the first failure stops the shards not yet started
    finally:
        pool.shutdown(cancel_futures=True)
    paths = [f.result() for f in futures]
    return {"train": paths[:-1], "val": paths[-1:]}


def iter_parquet_texts(paths: Iterable[Path], column: str = "text") -> Iterator[str]:
    """Yield the non-null strings of `column`, one row group at a time, file after file."""
    import pyarrow.parquet as pq  # deferred: the builtin corpus needs no pyarrow

    for path in paths:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            values = pf.read_row_group(i, columns=[column]).column(column).to_pylist()
            yield from (v for v in values if v is not None)
