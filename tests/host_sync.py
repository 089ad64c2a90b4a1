"""Patch every way of reading a tensor back to the host so that it raises (for no-sync tests)."""
import torch

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


def forbid_host_sync(monkeypatch, where: str = "the code under test") -> None:
    """Until ``monkeypatch.undo()``, any host read of a tensor raises AssertionError."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"host synchronisation inside {where}")

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
