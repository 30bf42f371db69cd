"""The module paths of the flat layout keep working (``torchinit.specs``,
``torchinit.keyed``, ``torchinit.sharding``, ``torchinit.diagnostics``...): each old
path names the module that now holds its contents. No warning: they are documented."""

from __future__ import annotations

import importlib
import sys

#: old path (under torchinit) -> module that holds it now
ALIASES = {
    "fans": "core.fans",
    "gains": "core.gains",
    "specs": "core.specs",
    "torch_engine": "engines.torch_engine",
    "keyed": "engines.keyed",
    "keyed.backend": "engines.keyed.backend",
    "keyed.engine": "engines.keyed.engine",
    "keyed.key": "engines.keyed.key",
    "keyed.reference": "engines.keyed.reference",
    "keyed._constants": "engines.keyed._constants",
    "sharding": "engines.keyed.shards",
    "policy": "model.policy",
    "presets": "model.presets",
    "nonlinearity": "model.nonlinearity",
    "routing": "model.routing",
    "materialize": "scale.materialize",
    "weights": "scale.weights",
    "diagnostics": "evidence.diagnostics",
    "plots": "evidence.plots",
    "lsuv": "evidence.lsuv",
}


def install(package: str) -> None:
    """Register every alias in ``sys.modules`` and as an attribute of its parent
    (unless the parent already has one: ``torchinit.materialize`` stays the function)."""
    for old, new in ALIASES.items():
        module = importlib.import_module(f"{package}.{new}")
        sys.modules[f"{package}.{old}"] = module
        parent_name, _, leaf = f"{package}.{old}".rpartition(".")
        parent = sys.modules[parent_name]
        if not hasattr(parent, leaf):
            setattr(parent, leaf, module)
