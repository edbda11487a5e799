"""Model families: one small adapter per transformers ``model_type`` (see :mod:`coact.families.base`).

``FAMILIES`` maps a ``model_type`` to a factory returning its :class:`~coact.families.base.Family`; the built-ins
register themselves in :mod:`coact.families.gated` (gate/up/down, fused gate_up) and :mod:`coact.families.plain`
(fc1/fc2 with biases, Conv1D, OPT, BLOOM) and :mod:`coact.families.moe` (mixture-of-experts: Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE). A third party adds a family with
``FAMILIES.add("mytype", lambda: Family(...), "description")``.
"""
from __future__ import annotations

from typing import Any, Callable

from common.registry import Registry
from coact.errors import ModelError
from coact.families.base import Family, get_path

FAMILIES: Registry[Callable[[], Family]] = Registry(
    "model family", modules=("coact.families.gated", "coact.families.plain", "coact.families.moe"))


def family_for(config: Any) -> Family:
    """The adapter of a transformers config (by ``config.model_type``); one clear error for anything else."""
    model_type = str(getattr(config, "model_type", "") or "")
    if model_type not in FAMILIES:
        raise ModelError(f"unsupported model family {model_type or '(no model_type)'!r}; supported: "
                         f"{', '.join(FAMILIES.names())}")
    return FAMILIES.get(model_type)()


def register(family: Family, *model_types: str) -> None:
    """Register ``family`` under its name and every extra ``model_type`` that shares its layout."""
    for name in (family.name, *model_types):
        FAMILIES.add(name, lambda family=family: family, family.describe())


__all__ = ["FAMILIES", "Family", "family_for", "get_path", "register"]
