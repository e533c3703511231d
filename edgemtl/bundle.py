"""Atomic bundle folders: everything is written to a hidden sibling folder and moved into place at the end.

A failed or interrupted compile leaves nothing at the destination (and an existing bundle there stays as
it was). An existing folder that is not an edgemtl bundle is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from edgemtl.errors import EdgemtlError

MANIFEST = "manifest.json"


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest of the bundle folder `bundle`, or a one-line EdgemtlError saying why it is not one: the one reader
    `edgemtl report` and `edgemtl profile` share."""
    bundle = Path(bundle)
    manifest_path = bundle / MANIFEST
    if not bundle.is_dir() or not manifest_path.is_file():
        raise EdgemtlError(f"{bundle} is not an edgemtl bundle (no {MANIFEST}); pass a folder written by "
                           "`edgemtl compile`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgemtlError(f"{manifest_path} cannot be read as JSON: {exc}") from None
    tasks = manifest.get("tasks") if isinstance(manifest, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise EdgemtlError(f"{manifest_path} lists no tasks; is {bundle} an edgemtl bundle?")
    return manifest


def check_destination(dest: Path) -> None:
    """Refuse to replace a file, or a non-empty folder that is not an edgemtl bundle."""
    if dest.exists() and not dest.is_dir():
        raise EdgemtlError(f"output path {dest} is a file; choose a folder name with -o")
    blocking = next((p for p in dest.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise EdgemtlError(f"output path {dest} lies under {blocking}, which is a file; choose a folder name with -o")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise EdgemtlError(f"output folder {dest} exists and is not an edgemtl bundle; choose another -o or empty it")


@contextmanager
def staged_bundle(dest: Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `dest` in one rename, on failure it is deleted."""
    dest = dest.resolve()
    check_destination(dest)
    created_parent = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_parent:
            _remove_empty_parents(dest.parent)
        raise
    previous = dest.parent / f".{dest.name}.previous-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        os.replace(dest, previous)
    os.replace(staging, dest)
    shutil.rmtree(previous, ignore_errors=True)


def _remove_empty_parents(folder: Path) -> None:
    while folder != folder.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")
    return path


def write_json_atomically(path: Path, data: dict[str, Any]) -> Path:
    """`data` as JSON through a temporary file in the same folder and one rename: a crash or a full disk leaves
    the previous file whole, never half of a new one (profiles, manifests rewritten in place, benchmark results)."""
    return write_text_atomically(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_text_atomically(path: Path, text: str) -> Path:
    """`text` written through a temporary file and one rename (see write_json_atomically)."""
    return write_file_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_file_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Whatever `write(temporary)` puts at a temporary path in `path`'s folder, moved to `path` in one rename once
    `write` returned: a crash, a full disk or a check that `write` fails leaves the previous file whole and no
    temporary behind (checkpoints, exported ONNX, JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the file unreadable to others
        write(Path(temporary))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def file_slug(text: str, default: str) -> str:
    """`text` as a safe file or folder name (device keys, data references)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or default


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks: what ties a number in a report to the exact artifact it came from."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
