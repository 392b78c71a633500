"""Backbones shared across families. Each declares the data kinds it accepts (``input_kinds``)."""

from __future__ import annotations

from collections.abc import Callable


def input_kind_error(factory: Callable, kind: str, role: str = "net") -> str | None:
    """Why the backbone built by ``factory`` (a class or a ``functools.partial`` of one) cannot
    take ``kind`` data (``"image"``/``"text"``), or None. Backbones without ``input_kinds`` take both."""
    kinds = getattr(getattr(factory, "func", factory), "input_kinds", ("image", "text"))
    return None if kind in kinds else f"the {role} backbone only handles {'/'.join(kinds)} data, not {kind}"
