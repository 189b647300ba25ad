"""Data sets generated on first use into a cache directory: atomically, under a file lock, and
verified by an index, so a crash or several processes at once (DDP ranks on one node, jobs sharing a
cache) never leave a half-written set that is later trusted.

A generated directory holds the files its generator writes plus `index.json`: the generation
parameters and the size and sha256 of every file, written last. A directory is used as is only when
its index names exactly the parameters asked for and every file matches it; otherwise it is
regenerated into a hidden temporary directory beside it and swapped in whole. Bump a format version
inside `params` when a generator's output changes, and old caches are regenerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("arjepa_pl.data")

INDEX = "index.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(root: Path, params: dict, expected_files: set[str]) -> bool:
    """True when root holds exactly the set `params` describes, undamaged."""
    try:
        index = json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return False
    if index.get("params") != params:
        return False
    files = index.get("files", {})
    if set(files) != expected_files:
        return False
    for relpath, meta in files.items():
        path = root / relpath
        if not path.is_file() or path.stat().st_size != meta.get("size"):
            return False
        if sha256(path) != meta.get("sha256"):
            return False
    return True


def write_index(root: Path, params: dict, files: Iterable[str]) -> None:
    """index.json last: a set without it is never trusted."""
    entries = {}
    for relpath in sorted(files):
        path = root / relpath
        entries[relpath] = {"size": path.stat().st_size, "sha256": sha256(path)}
    (root / INDEX).write_text(json.dumps({"params": params, "files": entries}, indent=2) + "\n")


@contextmanager
def exclusive_lock(lock_path: Path):
    """Inter-process lock so concurrent callers generate a set only once.

    Without fcntl (Windows) we rely on the atomic rename alone: concurrent
    callers may both generate, but nobody trusts a half-written set.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_leftovers(root: Path, max_age_s: float = 3600.0) -> None:
    # Temp dirs of crashed runs. Only old ones: a young one may belong to a live
    # process on another machine sharing this file system (where flock may not hold).
    for leftover in root.parent.glob(f".{root.name}.*-*"):
        if leftover.is_dir() and time.time() - leftover.stat().st_mtime > max_age_s:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_owned(root: Path, owned_names: set[str], what: str, env_var: str | None) -> None:
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"{what} dir {root} exists and is not a directory")
        foreign = sorted(p.name for p in root.iterdir() if p.name not in owned_names | {INDEX})
        if foreign:
            where = f"the {what} dir" + (f" / ${env_var}" if env_var else "")
            raise ValueError(
                f"{what} dir {root} holds files that are not part of a {what} set ({', '.join(foreign[:5])}); "
                f"refusing to overwrite it: point {where} at an empty or new directory"
            )


def ensure_generated(
    root: Path,
    params: dict,
    expected_files: set[str],
    generate: Callable[[Path], None],
    *,
    what: str,
    env_var: str | None = None,
) -> Path:
    """`root` holding the set `params` describes: reused when intact, else generated.

    `generate(tmp)` writes every file of `expected_files` (paths relative to the set's root) into the
    empty directory `tmp`, which then becomes `root`. Only names at the top of `expected_files` may be
    replaced: a `root` that holds anything else (a user's own data) is refused, never deleted. Cheap when
    cached (one hash per file), so every process may call it.
    """
    root = Path(root)
    # Fast path without the lock (a set is only ever swapped in whole), which
    # also lets a complete set be used from a read-only location.
    if is_complete(root, params, expected_files):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root, params, expected_files):  # another process made it while we waited
            return root
        _check_owned(root, {Path(f).parts[0] for f in expected_files}, what, env_var)
        _remove_stale_leftovers(root)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = root.parent / f".{root.name}.tmp-{token}"
        stale = root.parent / f".{root.name}.stale-{token}"
        try:
            tmp.mkdir()
            generate(tmp)
            missing = sorted(f for f in expected_files if not (tmp / f).is_file())
            if missing:
                raise RuntimeError(f"the {what} generator did not write {missing[:5]}")
            write_index(tmp, params, expected_files)
            # Swap: move any old (damaged / different) set aside, rename the new one in.
            if root.exists():
                root.rename(stale)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(stale, ignore_errors=True)
    return root
