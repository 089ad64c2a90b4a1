"""Asset resolution order, the pinned-archive download (served from loopback), and its errors."""
import hashlib
import importlib
import http.server
import io
import os
import pathlib
import sys
import tarfile
import threading

import pytest

from ezm_gpu.envs import assets

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "humanoidbench"
TOP = f"humanoid-bench-{assets.HUMANOIDBENCH_COMMIT}"
FILES = {  # a few real asset files: enough for the layout check
    "humanoid_bench/assets/envs/h1_pos_walk.xml": None,
    "humanoid_bench/assets/envs/h1_pos_stand.xml": None,
    "humanoid_bench/assets/robots/h1_pos.xml": None,
}


def _content(rel):
    path = SHARED / rel
    return path.read_bytes() if path.is_file() else f"<mujoco model='{rel}'/>".encode()


def _archive(extra=(), files=FILES) -> bytes:
    """A GitHub-style source archive: <top>/README.md, <top>/humanoid_bench/assets/..., plus extra entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in [("README.md", b"readme"), ("humanoid_bench/__init__.py", b"")] + \
                [(rel, _content(rel)) for rel in files] + list(extra):
            info = tarfile.TarInfo(name if name.startswith(("/", "..")) else f"{TOP}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def serve():
    """Serves bytes at http://127.0.0.1:<port>/archive.tar.gz; returns (url_for(data), hits)."""
    payload, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path != "/archive.tar.gz" or "data" not in payload:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload["data"])))
            self.end_headers()
            self.wfile.write(payload["data"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def url_for(data):
        payload["data"] = data
        return f"http://127.0.0.1:{server.server_address[1]}/archive.tar.gz"

    yield url_for, hits
    server.shutdown()
    server.server_close()


def _without_installed_package(monkeypatch):
    """Hides any humanoid_bench package from the import system (the resolver finds one through it)."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (pathlib.Path(p or ".") / "humanoid_bench").exists()])
    importlib.invalidate_caches()


def _installed_package(monkeypatch, site: pathlib.Path, with_assets: bool = True) -> pathlib.Path:
    """A humanoid_bench package under ``site`` (first on sys.path) that must never be imported."""
    package = site / "humanoid_bench"
    if with_assets:
        (package / "assets/envs").mkdir(parents=True)
        (package / "assets/envs/h1_pos_walk.xml").write_text(site.name)
    else:
        package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('humanoid_bench must not be imported')\n")
    monkeypatch.syspath_prepend(str(site))  # (invalidates the import caches)
    return site


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No env root, no installed package, an empty cache under tmp_path."""
    monkeypatch.delenv(assets.ROOT_ENV, raising=False)
    monkeypatch.delenv(assets.URL_ENV, raising=False)
    monkeypatch.delenv(assets.SHA256_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _without_installed_package(monkeypatch)
    # The served archives hold FILES only: verify against their manifest (the shipped one is tested below).
    monkeypatch.setattr(assets, "read_manifest", lambda path=None: {rel: hashlib.sha256(_content(rel)).hexdigest()
                                                                   for rel in FILES})
    return tmp_path


def test_download_installs_assets_into_the_cache(isolated, serve, monkeypatch):
    url_for, hits = serve
    data = _archive()
    monkeypatch.setenv(assets.URL_ENV, url_for(data))
    monkeypatch.setenv(assets.SHA256_ENV, hashlib.sha256(data).hexdigest())
    root = assets.resolve_root()
    assert root == assets.cache_dir() == isolated / "cache" / "ezm_gpu" / "humanoid_bench" / assets.HUMANOIDBENCH_COMMIT
    for rel in FILES:
        assert (root / rel).read_bytes() == _content(rel)
    assert not (root / "README.md").exists() and not (root / "humanoid_bench" / "__init__.py").exists()  # assets only
    assert [p.name for p in root.parent.iterdir()] == [assets.HUMANOIDBENCH_COMMIT]  # no leftovers
    assert assets.scene_path("h1", "walk") == root / "humanoid_bench/assets/envs/h1_pos_walk.xml"
    assert hits == ["/archive.tar.gz"]  # the second resolution (scene_path) was a cache hit


@pytest.mark.parametrize("case, message", [
    ("corrupt", "not a gzip file|bad|invalid"),
    ("sha", "does not match the pinned"),
    ("traversal", "unsafe path in archive"),
    ("absolute", "unsafe path in archive"),
    ("layout", "has no humanoid_bench/assets/envs/h1_pos_walk.xml"),
    ("missing", "HTTP Error 404"),
    ("tampered", "humanoid_bench/assets/robots/h1_pos.xml has sha256 [0-9a-f]{64}, HumanoidBench at 791405f5eacf has"),
    ("incomplete", r"1 file\(s\) missing \(e.g. \['humanoid_bench/assets/envs/h1_pos_stand.xml'\]\), 0 unexpected"),
    ("unexpected", r"0 file\(s\) missing .*1 unexpected \(e.g. \['humanoid_bench/assets/envs/extra.xml'\]\)"),
    ("oversized", "over the 4,096-byte cap|exceeds the 4,096-byte cap"),
])
def test_bad_downloads_fail_clearly_and_leave_no_cache(isolated, serve, monkeypatch, case, message):
    url_for, _ = serve
    data = {"corrupt": b"definitely not gzip", "sha": _archive(), "traversal": _archive(extra=[("../evil", b"x")]),
            "absolute": _archive(extra=[("/etc/evil", b"x")]),
            "layout": _archive(files={"humanoid_bench/assets/robots/h1_pos.xml": None}),
            "tampered": _archive(files=[rel for rel in FILES if "robots" not in rel],
                                 extra=[("humanoid_bench/assets/robots/h1_pos.xml", b"<mujoco model='other'/>")]),
            "incomplete": _archive(files=[rel for rel in FILES if "stand" not in rel]),
            "unexpected": _archive(extra=[("humanoid_bench/assets/envs/extra.xml", b"<mujoco/>")]),
            "oversized": _archive(extra=[("humanoid_bench/assets/big.bin", os.urandom(20_000))])}.get(case)
    url = url_for(data) if data is not None else url_for(b"").replace("archive", "nothing")
    monkeypatch.setenv(assets.URL_ENV, url)
    if case == "sha":
        monkeypatch.setenv(assets.SHA256_ENV, "0" * 64)
    if case == "oversized":
        monkeypatch.setattr(assets, "MAX_ARCHIVE_BYTES", 4096)
    with pytest.raises(assets.AssetsNotFoundError, match=message) as error:
        assets.resolve_root()
    text = str(error.value)
    for tried in (f"${assets.ROOT_ENV} (not set)", "installed humanoid_bench package (not installed)",
                  "user cache", f"download {url}", "Fix: set EZM_HUMANOIDBENCH_ROOT"):
        assert tried in text
    cache_parent = assets.cache_dir().parent
    assert not cache_parent.exists() or list(cache_parent.iterdir()) == []  # nothing half-written


def test_resolution_order(isolated, monkeypatch, tmp_path):
    def make_root(name):
        root = tmp_path / name
        (root / "humanoid_bench/assets/envs").mkdir(parents=True)
        (root / "humanoid_bench/assets/envs/h1_pos_walk.xml").write_text(name)
        return root

    explicit, env = make_root("explicit"), make_root("env")
    package = _installed_package(monkeypatch, tmp_path / "site")
    cached = assets.cache_dir()  # $XDG_CACHE_HOME (isolated's) /ezm_gpu/humanoid_bench/<commit>
    (cached / "humanoid_bench/assets/envs").mkdir(parents=True)
    (cached / "humanoid_bench/assets/envs/h1_pos_walk.xml").write_text("cached")
    monkeypatch.setenv(assets.ROOT_ENV, str(env))
    assert assets.resolve_root(explicit) == explicit
    assert assets.resolve_root() == env
    monkeypatch.delenv(assets.ROOT_ENV)
    assert assets.resolve_root() == package
    sys.path.remove(str(package))
    importlib.invalidate_caches()
    assert assets.resolve_root() == cached
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(assets.AssetsNotFoundError, match="download disabled"):
        assets.resolve_root(download=False)


def test_wrong_explicit_or_env_root_is_named(isolated, monkeypatch, tmp_path):
    with pytest.raises(assets.AssetsNotFoundError, match=f"the asset root given explicitly, {tmp_path}"):
        assets.resolve_root(tmp_path)
    monkeypatch.setenv(assets.ROOT_ENV, str(tmp_path))
    with pytest.raises(assets.AssetsNotFoundError, match=rf"\$EZM_HUMANOIDBENCH_ROOT={tmp_path} \(no "):
        assets.resolve_root(download=False)


def test_installed_package_is_found_without_importing_it(isolated, monkeypatch, tmp_path):
    site = _installed_package(monkeypatch, tmp_path / "site")
    assert assets.resolve_root() == site
    assert "humanoid_bench" not in sys.modules


def test_installed_package_without_assets_is_passed_over(isolated, monkeypatch, tmp_path):
    site = _installed_package(monkeypatch, tmp_path / "site", with_assets=False)
    with pytest.raises(assets.AssetsNotFoundError, match=rf"installed humanoid_bench package \({site}\)"):
        assets.resolve_root(download=False)



@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/humanoidbench is not present")
def test_shared_assets_resolve_through_the_environment(monkeypatch):
    monkeypatch.setenv(assets.ROOT_ENV, str(SHARED))
    assert assets.scene_path("h1", "walk") == SHARED / "humanoid_bench/assets/envs/h1_pos_walk.xml"
    with pytest.raises(assets.AssetsNotFoundError, match="no scene h1_pos_fly.xml"):
        assets.scene_path("h1", "fly")


def test_shipped_manifest_is_the_pinned_assets_file_for_file(tmp_path):
    """The manifest the package ships (every asset file's sha256) matches the shared copy exactly, and a
    download holding only the marker file (what the old check accepted) is refused by it."""
    manifest = assets.read_manifest()
    assert len(manifest) == 716 and assets._MARKER.as_posix() in manifest
    assets.verify_assets(SHARED, manifest)
    target = tmp_path / assets._MARKER
    target.parent.mkdir(parents=True)
    target.write_bytes((SHARED / assets._MARKER).read_bytes())
    with pytest.raises(ValueError, match=r"715 file\(s\) missing"):
        assets.verify_assets(tmp_path, manifest)
