"""Where a cache lives: a local folder (a plain path, or a ``file://`` URL naming one) or any other fsspec
URL (``memory://``, ``s3://`` with s3fs, ``gs://`` with gcsfs, ...).

    root = as_path("s3://bucket/caches/imagenet")    # RemotePath; as_path("cache/x") is a pathlib.Path
    store = zarr_store(root)                          # LocalStore folder or zarr's own FsspecStore
    write_text(root / "manifest.json", text)          # atomic (rename) locally, one whole-object write remotely

A local folder stays a :class:`pathlib.Path` with every guarantee it had (atomic renames, ``O_EXCL``
lock); a remote location is a :class:`RemotePath`, the few pathlib methods the cache uses over fsspec.
What each kind guarantees: :func:`guarantees` (and the README's "Cache location").
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import IIMError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(::[A-Za-z][A-Za-z0-9+.\-]*)*://")
_LOCAL = ("file", "local")


def redact(where) -> str:
    """``where`` as iim writes or prints it: in a URL the user info (``user:secret@``) becomes ``***@``
    and every query value (``?token=...``) ``***``, in each part of a chained URL (``a::s3://...``); a
    plain path is returned as it is. The only form of a location in manifests, results, logs and errors."""
    text = str(where)
    if not is_url(text):
        return text
    return "::".join(_redact_part(part) for part in text.split("::"))


def _redact_part(part: str) -> str:
    if "://" not in part:
        return part
    scheme, rest = part.split("://", 1)
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    rest, hash_, fragment = rest.partition("#")
    path, query_, query = rest.partition("?")
    if query_:
        query = "&".join(f"{p.split('=', 1)[0]}=***" if "=" in p else p for p in query.split("&"))
    return f"{scheme}://{authority}{path}{query_}{query}{hash_}{fragment}"


def is_url(where) -> bool:
    """``where`` is written as a URL (``scheme://...``), not a plain path."""
    return isinstance(where, RemotePath) or (isinstance(where, str) and bool(_URL.match(where)))


class RemotePath:
    """A file or folder at an fsspec URL, with the pathlib methods the cache uses. ``str()`` is the URL."""

    def __init__(self, fs, path: str, url: str):
        self.fs, self.path, self.url = fs, path.rstrip("/") or "/", url.rstrip("/")

    @property
    def protocol(self) -> str:
        p = self.fs.protocol
        return p if isinstance(p, str) else p[0]

    def __str__(self) -> str:
        """The URL without its credentials (:func:`redact`); ``.url`` keeps them, to open it."""
        return redact(self.url)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name) -> "RemotePath":
        name = str(name).strip("/")
        return RemotePath(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.url}/{name}")

    def _at(self, fs_path: str) -> "RemotePath":
        """The RemotePath of ``fs_path`` (a path the filesystem returned) below this one."""
        return self / fs_path[len(self.path.rstrip("/")):].strip("/")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0] or "/", self.url.rsplit("/", 1)[0])

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def iterdir(self):
        return (self._at(p) for p in self.fs.ls(self.path, detail=False) if p.rstrip("/") != self.path)

    def glob(self, pattern: str):
        return (self._at(p) for p in sorted(self.fs.glob(f"{self.path.rstrip('/')}/{pattern}")))

    def rglob(self, name: str):
        return (self._at(p) for p in self.files() if p.rsplit("/", 1)[-1] == name)

    def files(self) -> list[str]:
        """Filesystem paths of every file below (one listing)."""
        return sorted(self.fs.find(self.path)) if self.fs.isdir(self.path) else []

    def read_text(self) -> str:
        try:
            return self.fs.cat_file(self.path).decode()
        except FileNotFoundError:
            raise FileNotFoundError(f"no file {self}") from None

    def write_text(self, text: str) -> None:
        """One whole-object write: readers see the old object or the new one on object stores."""
        self.fs.pipe_file(self.path, text.encode())

    def create_exclusive(self, text: str) -> bool:
        """Create the file holding ``text`` unless it exists (False then). Exclusive where the filesystem
        implements mode ``xb`` (memory; s3fs with conditional writes); else a check, then a write."""
        if self.fs.exists(self.path):
            return False
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(text.encode())
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError):          # no exclusive mode: best effort
            self.fs.pipe_file(self.path, text.encode())
        return self.read_text() == text                    # another writer won the race

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.makedirs(self.path, exist_ok=True)


def as_path(where) -> Path | RemotePath:
    """The location ``where`` names: a :class:`~pathlib.Path` for a plain path or a ``file://`` URL, a
    :class:`RemotePath` for any other fsspec URL; an unknown protocol is a one-line error."""
    if isinstance(where, (Path, RemotePath)):
        return where
    where = os.fspath(where)
    if not is_url(where):
        return Path(where)
    import fsspec
    protocol = where.split("://", 1)[0].split("::")[0].lower()
    if protocol in _LOCAL and "::" not in where.split("://", 1)[0]:
        from fsspec.implementations.local import LocalFileSystem
        return Path(LocalFileSystem._strip_protocol(where))
    try:
        fs, path = fsspec.core.url_to_fs(where)
    except ValueError as e:
        raise IIMError(f"cannot open {redact(where)}: {_scrub(e, where)} (fsspec protocols: file://, memory://, "
                       f"s3:// with s3fs, gs:// with gcsfs, ...; or a plain folder)") from None
    except ImportError as e:
        raise IIMError(f"cannot open {redact(where)}: {_scrub(e, where)} (pip install the fsspec backend for "
                       f"{protocol}://)") from None
    return RemotePath(fs, path, where)


def _scrub(error, where) -> str:
    """An exception's text with the URL ``where`` (as given) replaced by its redacted form."""
    return str(error).replace(str(where), redact(where))


def record(where) -> str:
    """How a run records the cache it used: a local folder as an absolute path, a URL as given less its
    credentials (:func:`redact`; a later command takes them from ``--cache`` again)."""
    p = as_path(where)
    return str(p.resolve()) if isinstance(p, Path) else str(p)


def zarr_store(root: Path | RemotePath):
    """The Zarr store of the cache at ``root``: a local folder (zarr's LocalStore) or zarr's own
    ``FsspecStore`` on the same filesystem."""
    if isinstance(root, Path):
        return str(root)
    from zarr.storage import FsspecStore
    return FsspecStore.from_url(root.url)


def write_text(path: Path | RemotePath, text: str) -> None:
    """Write a small file (the manifest) so that no reader sees half of it: a temporary file renamed
    over it locally (:func:`iim.atomic.atomic_write_text`), one whole-object write remotely."""
    if isinstance(path, Path):
        atomic_write_text(path, text)
    else:
        path.write_text(text)


def replace_tree(src: Path | RemotePath, dst: Path | RemotePath) -> None:
    """Move the folder ``src`` onto ``dst`` (replacing it): a rename locally; remotely a copy, then a
    delete (not atomic: readers check that every chunk is there, see ``missing_chunks``)."""
    if isinstance(src, Path):
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(src, dst)
        return
    if dst.exists():
        dst.fs.rm(dst.path, recursive=True)
    src.fs.mv(src.path, dst.path, recursive=True)


def existing(folder: Path | RemotePath, files: list) -> list[bool]:
    """Which of ``files`` (below ``folder``) exist: a stat each locally, one listing remotely."""
    if isinstance(folder, Path):
        return [Path(f).is_file() for f in files]
    have = set(folder.files())
    return [f.path in have for f in files]


def tree_size(folder: Path | RemotePath) -> int:
    """Bytes stored below ``folder``."""
    if isinstance(folder, Path):
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return int(folder.fs.du(folder.path, total=True)) if folder.exists() else 0


def guarantees(root: Path | RemotePath) -> str:
    """One line: what the store at ``root`` guarantees (README "Cache location")."""
    if isinstance(root, Path):
        return "local folder: atomic manifest (rename), O_EXCL writer lock, whole-chunk resume"
    if root.protocol == "memory":
        return "memory:// (this process only): whole-object writes, exclusive-create lock, whole-chunk resume"
    return (f"{root.protocol}:// via fsspec: whole-object writes (completion marked after every chunk), "
            f"best-effort writer lock, whole-chunk resume")
