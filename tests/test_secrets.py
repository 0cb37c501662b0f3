"""Credentials in a cache URL (issue 26): ``s3://user:secret@bucket/...`` or ``?token=...`` are never written
into manifests, run and result files, sweep folders, logs or messages; one helper
(:func:`iim.cache.location.redact`) gives the form iim writes and prints. memory:// takes the user info and
the query as part of its path, so a whole extract -> train -> score -> sweep -> predict -> cache session runs
on such a URL in one process, and every byte it writes or prints is searched for the secrets."""
import logging
import uuid

import fsspec
import pytest

from imagegen import make_world
from iim.cache.location import as_path, record, redact
from test_extract_cli import run_cli
from test_fsspec import FAST, TINY

SECRETS = ("hunter2", "s3cr3t")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("url, shown", [
    ("s3://AKIAXX:hunter2@bucket/a/b", "s3://***@bucket/a/b"),
    ("s3://bucket/x?token=hunter2&versionId=7#top", "s3://bucket/x?token=***&versionId=***#top"),
    ("simplecache::s3://u:hunter2@b/c?X-Amz-Signature=s3cr3t", "simplecache::s3://***@b/c?X-Amz-Signature=***"),
    ("https://u:hunter2@host:8080/x?sig=s3cr3t&flag", "https://***@host:8080/x?sig=***&flag"),
    ("gs://bucket/plain", "gs://bucket/plain"),
    ("cache/name@2x", "cache/name@2x"),                            # a plain path is not a URL
])
def test_redact(url, shown):
    assert redact(url) == shown and redact(shown) == shown


def test_error_messages_about_a_url_are_redacted():
    from iim.errors import IIMError
    with pytest.raises(IIMError) as e:
        as_path("nosuchproto://u:hunter2@x/y?token=s3cr3t")
    assert not any(s in str(e.value) for s in SECRETS) and "***@x/y" in str(e.value)


def _files(root) -> dict:
    """Path -> text (path included) of every file below the folder ``root``."""
    return {str(p): str(p) + p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()}


def _memory_files(prefix) -> dict:
    """Every file's content below ``prefix`` in the memory filesystem (its paths hold the secrets by design)."""
    fs = fsspec.filesystem("memory")
    return {"memory:" + p.split("/cache", 1)[-1]: fs.cat_file(p).decode("latin-1") for p in fs.find(prefix)}


def test_a_session_on_a_url_with_credentials_writes_and_prints_no_secret(tmp_path, monkeypatch, capsys, caplog):
    world = make_world(tmp_path / "world", classes=("a", "b", "c"), train_per_class=2, test_per_class=3,
                       ood={"x": 4})
    tag = uuid.uuid4().hex
    url = f"memory://reader:{SECRETS[0]}@iim-tests/{tag}/cache?token={SECRETS[1]}"
    seen = []

    def iim(*args, ok=True):
        code, out, err = run_cli(args, capsys, monkeypatch)
        seen.append(out + err)
        assert (code == 0) == ok, err
        return out + err

    caplog.set_level(logging.DEBUG, logger="iim")
    iim("extract", "-b", world["toml"], "--shots", 2, "--seed", 1, "-o", url, "--batch-size", 4, *TINY)
    for sub in ("info", "verify", "ls"):
        iim("cache", sub, url if sub != "ls" else f"memory://reader:{SECRETS[0]}@iim-tests/{tag}")
    iim("cache", "export", url, tmp_path / "c.h5")
    iim("cache", "import", tmp_path / "c.h5", url.replace("/cache?", "/copy?"))
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "noun.x.txt").write_text("dog\ntree\nboat\n")
    iim("negatives", "--cache", url, "--vocab", tmp_path / "vocab", "--out", tmp_path / "neg")
    run = tmp_path / "run"
    iim("train", "--cache", url, "--out", run, *FAST)
    # the run records the URL without its secrets: score names the fix and works with --cache
    out = iim("score", "--run", run, "--k", 3, "--no-plots", "--no-progress", ok=False)
    assert "recorded without its credentials; give its URL again with --cache URL" in out
    iim("score", "--run", run, "--cache", url, "--k", 3, "--no-plots", "--no-progress")
    iim("grid", "--cache", url, "--grid", "n_neg=0", "--grid", "epochs=1", "--grid", "k=8", "--grid", "n_ctx=4",
        "--grid", "batch_size=8", "--seed", 1, "--k", "3,5", "--no-progress", "--out", tmp_path / "grid")
    image = next(world["test"].rglob("*.png"))
    iim("predict", "--run", run, "--cache", url, "--k", 3, "--no-progress", "--out", tmp_path / "pred", image)
    iim("train", "--cache", url.replace("/cache?", "/nothing?"), "--out", tmp_path / "bad", *FAST, ok=False)
    written = {**_files(tmp_path / "run"), **_files(tmp_path / "grid"), **_files(tmp_path / "pred"),
               **_files(tmp_path / "bad"), **_files(tmp_path / "neg"), **_memory_files(f"/iim-tests/{tag}"),
               "c.h5": (tmp_path / "c.h5").read_bytes().decode("latin-1"),
               "printed": "\n".join(seen), "logged": "\n".join(r.getMessage() for r in caplog.records)}
    leaks = sorted(name for name, text in written.items() if any(s in text for s in SECRETS))
    assert not leaks, [(n, [line for line in written[n].splitlines() if any(s in line for s in SECRETS)][:3])
                       for n in leaks]
    assert record(url) == redact(url) == f"memory://***@iim-tests/{tag}/cache?token=***"
    assert redact(url) in written[str(run / "config.json")]       # recorded, in its redacted form
