"""Hydra configuration files shipped with ezm-gpu (package data)."""
