"""Atomic training checkpoints and the RNG states a resumed run needs to reproduce an uninterrupted one.

A checkpoint is one ``torch.save`` file holding the caller's state dict (nested dicts / lists / tuples
of tensors and plain Python values: model, optimiser, EMA, replay, counters, RNG states) inside a small
envelope that marks it as ours. ``save_checkpoint`` writes a temporary file in the target's directory,
fsyncs it, renames it over the target with ``os.replace`` (atomic on POSIX and Windows within one file
system) and fsyncs the directory, so ``path`` always holds either the previous complete checkpoint or
the new complete one, never a partial file, whatever point a crash or kill interrupts the write at.

Files are named ``checkpoint_<updates:012d>.pt`` by ``checkpoint_path`` so ``latest_checkpoint`` can
order them by update count (the zero padding also sorts them by name); temporary files start with a
dot and end in ``.tmp`` and are never mistaken for checkpoints.

Reproducibility: ``capture_rng_state`` / ``restore_rng_state`` cover Python's ``random``, NumPy's
global generator, torch's CPU generator, every CUDA device's generator (when CUDA is available) and the
caller's own ``torch.Generator`` objects (acting, replay sampling, ...). With those restored along
with the model, optimiser, EMA and replay, a resumed CPU run repeats the uninterrupted run bit for bit.

On CUDA the state is restored just as exactly, and the package's own scatters are deterministic
(repeated replay indices keep their largest priority; per-task return sums are fixed-order reductions;
the search kernels give each tree to one program, no atomics). What can differ is torch's own CUDA
arithmetic after the resume: the backward of gathers and index_select (atomic adds), and cuBLAS/cuDNN
kernels chosen per call, round differently from run to run. So a resumed CUDA run continues from exactly
the saved state, with the same data, counters and RNG streams, but its losses can drift from an
uninterrupted run's in the last bits and, over many updates, apart; it is the same run statistically.
"""
from __future__ import annotations

import os
import pickle
import random as _random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

try:  # NumPy is optional for the package; its global generator is only captured when installed
    import numpy as _np
except ImportError:  # pragma: no cover - numpy ships with the dev environment
    _np = None

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "save_checkpoint",
    "load_checkpoint",
    "rotate_checkpoints",
    "shard_path",
    "sweep_temporaries",
    "checkpoint_path",
    "latest_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

PathLike = Union[str, os.PathLike]

_FORMAT = "ezm_gpu.checkpoint"
_VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
# Messages torch.load gives for a truncated or overwritten file (zip container or pickle stream damaged).
_DAMAGE_SIGNS = ("PytorchStreamReader", "zip archive", "central directory", "invalid header", "truncated",
                 "unexpected end", "magic number")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or restored; the message says what was wrong and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file or run directory does not exist."""


# --------------------------------------------------------------------------------------- files


def checkpoint_path(run_dir: PathLike, updates: int) -> Path:
    """Where the checkpoint after ``updates`` learner updates lives: ``run_dir/checkpoint_<updates:012d>.pt``."""
    if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
        raise ValueError(f"updates must be an integer >= 0, got {updates!r}")
    return Path(run_dir) / f"checkpoint_{updates:012d}.pt"


def shard_path(checkpoint: PathLike, rank: int) -> Path:
    """Where rank ``rank`` (>= 1) of a data-parallel run keeps its shard of ``checkpoint``: its worlds, replay and
    draws (``checkpoint_<n>.rank<r>.pt``). Rank 0 writes ``checkpoint`` itself last, once every shard is on disk,
    so a checkpoint that exists is complete."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.rank{rank}.pt")


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in run_dir.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The newest checkpoint in ``run_dir`` (highest update count of ``checkpoint_<n>.pt``), or None.

    Raises ``CheckpointNotFoundError`` when ``run_dir`` does not exist (a mistyped resume directory
    should not silently start a fresh run). Temporary files of interrupted writes are ignored.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointNotFoundError(f"run directory {run_dir} does not exist (or is not a directory); check the "
                                      "resume path, or start a fresh run without resuming")
    found = _checkpoints(run_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(run_dir: PathLike, newest: PathLike, keep: int) -> list[Path]:
    """Deletes checkpoints older than ``newest`` (lower update count) beyond the ``keep - 1`` most recent of
    them, so ``newest`` and its ``keep - 1`` predecessors remain; returns the deleted paths. A checkpoint
    with a higher update count than ``newest`` is never touched (it is not older)."""
    newest = Path(newest)
    match = _NAME.match(newest.name)
    if match is None:
        raise ValueError(f"{newest} is not named like a checkpoint (checkpoint_<updates>.pt)")
    older = [path for updates, path in _checkpoints(Path(run_dir)) if updates < int(match.group(1))]
    doomed = older[:max(0, len(older) - (keep - 1))]
    for path in doomed:
        path.unlink()
        for shard in path.parent.glob(f"{path.stem}.rank*.pt"):  # a data-parallel run's other ranks' shards
            shard.unlink()
    return doomed


def sweep_temporaries(directory: PathLike) -> list[Path]:
    """Removes the temporary files of checkpoint writes that never finished (a process killed mid-write);
    returns them. Only ``save_checkpoint``'s own pattern (``.<name>.pt.<random>.tmp``) is matched."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    swept = [entry for entry in directory.glob(".*.pt.*.tmp") if entry.is_file()]
    for entry in swept:
        entry.unlink(missing_ok=True)
    return swept


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in ``directory`` durable (POSIX); directories cannot be opened on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: dict) -> Path:
    """Atomically writes ``state`` to ``path``; returns ``path`` as a Path.

    Args:
      path: the checkpoint file (e.g. ``checkpoint_path(run_dir, updates)``); its directory is created.
      state: a dict of nested dicts / lists / tuples of tensors (any device; stored as they are, loaded
        with ``map_location``) and plain Python values. Tensors are serialised when this call returns,
        so the caller may keep training right after.

    The data goes to a temporary file next to ``path`` (same file system, so the rename is atomic), is
    flushed and fsynced, then ``os.replace`` puts it at ``path``. If anything fails before the rename,
    the temporary file is removed and the error re-raised: ``path`` keeps its previous checkpoint.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)  # left by a writer killed mid-write (one writer per run directory)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": _FORMAT, "version": _VERSION, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible under `path`
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss
    return path


def _siblings_hint(path: Path) -> str:
    try:
        others = [p.name for _, p in _checkpoints(path.parent) if p != path]
    except OSError:
        others = []
    if not others:
        return ""
    return f"; other checkpoints in {path.parent}: {', '.join(others[-3:])}"


def load_checkpoint(path: PathLike, map_location: Any = None, weights_only: bool = True, mmap: bool = False) -> dict:
    """Reads a checkpoint written by ``save_checkpoint``; returns the ``state`` dict that was saved.

    Args:
      path: the checkpoint file.
      map_location: as for ``torch.load`` (e.g. "cpu", a device, or a dict); None restores tensors to
        the devices they were saved from.
      weights_only: torch's safe unpickler (tensors, containers, numbers, strings). Everything this
        package saves (``Learner``/``ReplayBuffer`` state dicts, ``capture_rng_state``) passes it; set
        False only for a trusted file whose state holds other Python objects.
      mmap: map the file instead of reading it (with ``map_location="cpu"``): a tensor's bytes are read
        only when used, so taking the model weights out of a checkpoint skips its replay.

    Raises:
      CheckpointNotFoundError: no file at ``path``.
      CheckpointError: the file is truncated, corrupt or not a checkpoint of this package.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"no checkpoint at {path}{_siblings_hint(path)}; check the path or use "
                                      "latest_checkpoint(run_dir)")
    if not zipfile.is_zipfile(path):  # save_checkpoint always writes torch's zip container, complete
        raise _corrupt(path, ValueError("not a complete zip container (no end-of-archive record)"))
    _verify_checksums(path)
    try:
        envelope = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as error:
        if weights_only and "weights_only" in str(error).lower():
            raise CheckpointError(
                f"checkpoint {path} holds objects the safe loader refuses ({error}); if the file is trusted, "
                "call load_checkpoint(..., weights_only=False)") from error
        raise _corrupt(path, error) from error
    except (EOFError, zipfile.BadZipFile) as error:
        raise _corrupt(path, error) from error
    except (RuntimeError, ValueError, OSError) as error:
        if any(sign in str(error) for sign in _DAMAGE_SIGNS):
            raise _corrupt(path, error) from error
        # Not a damaged file (e.g. tensors saved on CUDA, loaded without it): keep the file, say why.
        raise CheckpointError(f"checkpoint {path} could not be loaded: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''} (the file itself looks intact; "
                              "e.g. pass map_location='cpu' for a checkpoint saved on a GPU)") from error
    if not (isinstance(envelope, dict) and envelope.get("format") == _FORMAT and "state" in envelope):
        raise CheckpointError(f"{path} is a torch file but not a checkpoint written by "
                              "ezm_gpu.checkpoint.save_checkpoint; pass a file from save_checkpoint")
    if envelope.get("version") != _VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {envelope.get('version')!r}, this code reads "
                              f"version {_VERSION}; load it with the ezm_gpu version that wrote it")
    return envelope["state"]


def _verify_checksums(path: Path) -> None:
    """Every record of the zip container against the CRC-32 written with it (torch.load does not check
    them, so bytes changed inside a tensor would otherwise load silently)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise _corrupt(path, error) from error
    if damaged is not None:
        raise _corrupt(path, ValueError(f"record {damaged!r} fails its CRC-32 check"))


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    size = path.stat().st_size if path.exists() else 0
    return CheckpointError(
        f"checkpoint {path} ({size} bytes) cannot be read: {type(error).__name__}: {str(error).splitlines()[0]}. "
        f"It is truncated or corrupt (save_checkpoint never leaves a partial file, so it was damaged or "
        f"written by something else); delete it and resume from an older checkpoint{_siblings_hint(path)}")


# --------------------------------------------------------------------------------------- RNG states


def capture_rng_state(generators: Sequence[torch.Generator] = ()) -> dict:
    """The state of every random number generator a training run draws from.

    Args:
      generators: the run's own ``torch.Generator`` objects (any device), in a fixed order; pass the
        same objects, in the same order, to ``restore_rng_state``.

    Returns:
      A dict of tensors, ints, floats, strings and tuples (loadable with ``weights_only=True``):
      python (``random.getstate()``), numpy (the legacy global generator, key as an int64 tensor),
      torch_cpu, torch_cuda (one state per device; empty without CUDA), generators.
    """
    state = {
        "python": _random.getstate(),
        "numpy": None,
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
        "generator_devices": [str(g.device) for g in generators],
    }
    if _np is not None:
        name, key, pos, has_gauss, cached = _np.random.get_state(legacy=True)
        # A tensor rather than an ndarray: torch's safe loader does not accept NumPy arrays.
        state["numpy"] = (name, torch.from_numpy(key.astype(_np.int64)), int(pos), int(has_gauss), float(cached))
    return state


def restore_rng_state(state: dict, generators: Sequence[torch.Generator] = ()) -> None:
    """Puts back the generators captured by ``capture_rng_state`` (``generators`` in the same order).

    CUDA states are restored when CUDA is available; a checkpoint from a CUDA machine resumed without
    CUDA (or with fewer devices) warns, since the run can then not repeat the original draws anyway.
    """
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise CheckpointError(f"the checkpoint holds {len(saved)} torch.Generator states but {len(generators)} "
                              "generators were passed; pass the same generators, in the same order, as at capture")
    for i, (g, devices) in enumerate(zip(generators, state.get("generator_devices", [None] * len(saved)))):
        if devices is not None and torch.device(devices).type != g.device.type:
            raise CheckpointError(f"generator {i} was captured on {devices} but is now on {g.device}; create it "
                                  "on the same device type as in the saved run")
    _random.setstate(_as_tuple(state["python"]))
    if state.get("numpy") is not None:
        if _np is None:
            warnings.warn("the checkpoint holds a NumPy RNG state but NumPy is not installed; skipped")
        else:
            name, key, pos, has_gauss, cached = state["numpy"]
            _np.random.set_state((name, key.cpu().numpy().astype(_np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_cpu"].cpu())
    cuda = state.get("torch_cuda", [])
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn("the checkpoint holds CUDA RNG states but CUDA is not available; they were not restored")
        else:
            count = torch.cuda.device_count()
            if count != len(cuda):
                warnings.warn(f"the checkpoint holds {len(cuda)} CUDA RNG states, this machine has {count} "
                              "devices; restoring the first min of both")
            for device, rng in enumerate(cuda[:count]):
                torch.cuda.set_rng_state(rng.cpu(), device)
    for g, rng in zip(generators, saved):
        g.set_state(rng.cpu())


def _as_tuple(value):
    """``random.setstate`` needs tuples; a state that went through a list-producing serialiser is mended."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
