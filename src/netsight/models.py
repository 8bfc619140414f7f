"""Placeholder: filled in by the models/CLI work."""
from __future__ import annotations

from typing import Any


def load_model(spec: str, **kwargs: Any) -> Any:
    raise NotImplementedError


def load_weights(model: Any, path: str, **kwargs: Any) -> Any:
    raise NotImplementedError
