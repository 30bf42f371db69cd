"""Which layers LSUV treats apart from the paper's plain chain: layers whose tensors are
tied to another module's, and layers that end a residual branch (see :func:`torchinit.lsuv_`)."""

from __future__ import annotations

from typing import Any

from torch import nn


def _shared_with(model: nn.Module) -> dict[int, list[str]]:
    """Every name each parameter is reachable by (a tied tensor has several), by the
    parameter's id (the model holds every parameter alive while this is used)."""
    owners: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    return owners


def _tied(owners: dict[int, list[str]], name: str, m: nn.Module) -> list[str]:
    """The other names of ``m``'s weight and bias (empty when not shared)."""
    others: list[str] = []
    for pname in ("weight", "bias"):
        p = m._parameters.get(pname)
        if p is not None:
            own = f"{name}.{pname}" if name else pname
            others += [o for o in owners.get(id(p), []) if o != own and o not in others]
    return others


def _tied_layers(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> dict[str, list[str]]:
    """The chosen layers whose weight or bias is shared, with the other names of those tensors."""
    owners = _shared_with(model)
    return {name: others for name, m in chosen if (others := _tied(owners, name, m))}


def _residual_ends(model: nn.Module, inputs: Any, chosen: list[tuple[str, nn.Module]]) -> list[str]:
    """The chosen layers that end a residual branch (``LayerStats.residual``), found by one
    diagnose forward on the model as given."""
    from .diagnostics.run import diagnose

    found = {r.name for r in diagnose(model, inputs, backward=False).layers if r.kind == "linear" and r.residual}
    return [name for name, m in chosen if _label(name, m) in found]


def _label(name: str, m: nn.Module) -> str:
    return name or type(m).__name__  # how diagnose names a module (the root by its class)


def _branch_stats(model: nn.Module, inputs: Any, label: str) -> tuple[float, float | None]:
    """(output std, std of the stream it is added to) of layer ``label``, as diagnose records them."""
    from .diagnostics.run import diagnose

    rec = next(r for r in diagnose(model, inputs, backward=False).layers if r.name == label)
    return rec.std, rec.stream_std
