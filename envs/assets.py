"""Where HumanoidBench's MJCF assets come from (``docs/envs.md#assets``).

The asset root is the folder that contains ``humanoid_bench/assets``. It is resolved, first match wins:

1. the ``root`` argument (a config value);
2. the ``EZM_HUMANOIDBENCH_ROOT`` environment variable;
3. an installed ``humanoid_bench`` package, located without importing it (its pins conflict with ours);
4. the user cache, ``$XDG_CACHE_HOME/ezm_gpu/humanoid_bench/<commit>`` (default ``~/.cache``);
5. a download of HumanoidBench's source archive at the pinned commit, checked and unpacked (assets
   only) into that cache atomically: a half-finished download never looks like a cache hit.

Every failure names each location tried and how to fix it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.request
from typing import Optional

__all__ = ["HUMANOIDBENCH_COMMIT", "ARCHIVE_URL", "AssetsNotFoundError", "resolve_root", "scene_path", "cache_dir"]

HUMANOIDBENCH_COMMIT = "791405f5eacf879adbc99105adb3fee73f5a49fc"
ARCHIVE_URL = f"https://github.com/carlosferrazza/humanoid-bench/archive/{HUMANOIDBENCH_COMMIT}.tar.gz"
ROOT_ENV = "EZM_HUMANOIDBENCH_ROOT"
URL_ENV = "EZM_HUMANOIDBENCH_URL"  # another archive location (a mirror, or a local file:// path)
SHA256_ENV = "EZM_HUMANOIDBENCH_SHA256"  # optional pin of the archive's sha256
_MARKER = pathlib.Path("humanoid_bench", "assets", "envs", "h1_pos_walk.xml")  # present in every usable root
MANIFEST = pathlib.Path(__file__).with_name("asset_manifest.sha256")  # every asset file's sha256 at the commit
MAX_ARCHIVE_BYTES = 512 * 2**20  # the archive is ~10x smaller; a larger download is not HumanoidBench
_ASSETS = ("humanoid_bench", "assets")


class AssetsNotFoundError(FileNotFoundError):
    """No usable HumanoidBench asset root; the message lists every location tried."""


def cache_dir(commit: str = HUMANOIDBENCH_COMMIT) -> pathlib.Path:
    """The user-cache asset root for a commit."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base, "ezm_gpu", "humanoid_bench", commit)


def _usable(root: pathlib.Path) -> bool:
    return (root / _MARKER).is_file()


def _installed_package_root() -> Optional[pathlib.Path]:
    """Root of an installed humanoid_bench, found through its import spec (the package is not run)."""
    try:
        spec = importlib.util.find_spec("humanoid_bench")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations))).parent


def resolve_root(root: Optional[os.PathLike | str] = None, download: bool = True) -> pathlib.Path:
    """The folder containing ``humanoid_bench/assets``, by the order in the module docstring.

    Args:
      root: an explicit asset root; when given it must be usable (no fallback hides a wrong path).
      download: allow step 5; with False a miss raises instead.

    Raises:
      AssetsNotFoundError: nothing usable; the message lists what was tried and how to fix it.
    """
    tried = []
    if root is not None:
        path = pathlib.Path(root).expanduser()
        if _usable(path):
            return path
        raise AssetsNotFoundError(f"the asset root given explicitly, {path}, has no {_MARKER}; pass the folder "
                                  "that contains humanoid_bench/assets (e.g. ../shared/humanoidbench)")
    env_root = os.environ.get(ROOT_ENV)
    if env_root:
        path = pathlib.Path(env_root).expanduser()
        if _usable(path):
            return path
        tried.append(f"${ROOT_ENV}={path} (no {_MARKER})")
    else:
        tried.append(f"${ROOT_ENV} (not set)")
    package = _installed_package_root()
    if package is not None and _usable(package):
        return package
    tried.append(f"installed humanoid_bench package ({package or 'not installed'})")
    cached = cache_dir()
    if _usable(cached):
        return cached
    tried.append(f"user cache {cached} (empty)")
    url = os.environ.get(URL_ENV, ARCHIVE_URL)
    if not download:
        raise AssetsNotFoundError(_explain(tried, "download disabled"))
    try:
        return download_assets(url, cached, sha256=os.environ.get(SHA256_ENV))
    except (OSError, ValueError, tarfile.TarError) as error:
        tried.append(f"download {url} ({error})")
        raise AssetsNotFoundError(_explain(tried, None)) from error


def _explain(tried: list, extra: Optional[str]) -> str:
    lines = "\n  - ".join(tried + ([extra] if extra else []))
    return (f"HumanoidBench assets not found. Tried, in order:\n  - {lines}\nFix: set {ROOT_ENV} to a folder that "
            f"contains humanoid_bench/assets (a HumanoidBench checkout at {HUMANOIDBENCH_COMMIT[:12]}), pass "
            f"root=..., or allow the download (network access to {ARCHIVE_URL}; {URL_ENV} names a mirror).")


def read_manifest(path: pathlib.Path = MANIFEST) -> dict[str, str]:
    """The shipped manifest: asset path (from the asset root, POSIX) -> sha256 hex digest."""
    entries = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            digest, _, rel = line.partition("  ")
            entries[rel] = digest
    return entries


def verify_assets(root: pathlib.Path, manifest: dict[str, str]) -> None:
    """Raises ValueError unless ``root/humanoid_bench/assets`` holds exactly the manifest's files, each with
    its sha256 (archives of a commit are not byte-stable; their content is)."""
    found = {p.relative_to(root).as_posix() for p in (root / pathlib.Path(*_ASSETS)).rglob("*") if p.is_file()}
    missing, extra = sorted(set(manifest) - found), sorted(found - set(manifest))
    if missing or extra:
        raise ValueError(f"the archive's assets differ from HumanoidBench at {HUMANOIDBENCH_COMMIT[:12]}: "
                         f"{len(missing)} file(s) missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
    for rel, digest in manifest.items():
        actual = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        if actual != digest:
            raise ValueError(f"{rel} has sha256 {actual}, HumanoidBench at {HUMANOIDBENCH_COMMIT[:12]} has {digest}")


def download_assets(url: str, destination: pathlib.Path, sha256: Optional[str] = None,
                    timeout: float = 60.0, max_bytes: Optional[int] = None) -> pathlib.Path:
    """Downloads HumanoidBench's source archive and installs its assets as ``destination``, atomically.

    The archive is fetched to a temporary file next to the cache (at most ``max_bytes``, default
    ``MAX_ARCHIVE_BYTES``), checked
    (optional sha256 pin, gzip tar, only regular files and folders, no absolute or ``..`` paths), its
    ``humanoid_bench/assets`` tree unpacked into a temporary folder and verified file by file against
    the shipped manifest (``verify_assets``), and only then renamed into place. Returns ``destination``.
    """
    destination = pathlib.Path(destination)
    max_bytes = MAX_ARCHIVE_BYTES if max_bytes is None else max_bytes
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".partial-") as tmp:
        archive = pathlib.Path(tmp, "archive.tar.gz")
        digest, size = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
            announced = response.headers.get("Content-Length") or ""
            if announced.isdigit() and int(announced) > max_bytes:
                raise ValueError(f"the archive is {int(announced):,} bytes, over the {max_bytes:,}-byte cap")
            for chunk in iter(lambda: response.read(1 << 20), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"the archive exceeds the {max_bytes:,}-byte cap")
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256.lower():
            raise ValueError(f"archive sha256 {digest.hexdigest()} does not match the pinned {sha256}")
        staging = pathlib.Path(tmp, "root")
        _unpack_assets(archive, staging)
        if not _usable(staging):
            raise ValueError(f"the archive has no {_MARKER}: not HumanoidBench at {HUMANOIDBENCH_COMMIT[:12]}")
        verify_assets(staging, read_manifest())
        try:
            os.replace(staging, destination)  # atomic on one file system
        except OSError:
            if not _usable(destination):  # another process may have won the race with the same files
                raise
    return destination


def _unpack_assets(archive: pathlib.Path, staging: pathlib.Path) -> None:
    """Extracts ``<top>/humanoid_bench/assets/**`` of a GitHub source archive into ``staging``."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = pathlib.PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise ValueError(f"unsafe path in archive: {member.name!r}")
        for member in members:
            parts = pathlib.PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[1:3] != _ASSETS:
                continue
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"archive entry {member.name!r} is neither a file nor a folder")
            target = staging.joinpath(*parts[1:])
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def scene_path(robot: str, task: str, root: Optional[os.PathLike | str] = None) -> pathlib.Path:
    """HumanoidBench's scene file for a robot and task, e.g. ``envs/h1_pos_walk.xml``."""
    path = resolve_root(root) / "humanoid_bench" / "assets" / "envs" / f"{robot}_pos_{task}.xml"
    if not path.is_file():
        raise AssetsNotFoundError(f"no scene {path.name} under {path.parent}")
    return path
