"""The model's tensors as :func:`torchinit.plan` walks them: each once, in order, and which
are an embedding tied to an output head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["is_tied_head", "tensors_in_order"]


def tensors_in_order(model: nn.Module):
    """(qualified name, module path, module, local name, tensor, kind) in named_parameters order,
    each module's buffers after its parameters; tied tensors once."""
    seen: set[int] = set()
    for mpath, mod in model.named_modules():
        for kind, store in (("parameter", mod._parameters), ("buffer", mod._buffers)):
            for local, t in store.items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mpath}.{local}" if mpath else local), mpath, mod, local, t, kind


def is_tied_head(names: Sequence[tuple[str, str, nn.Module, str]], t: Tensor) -> bool:
    """One 2-D tensor registered as an input embedding's weight AND as another module's weight
    (an output projection: BERT's ``cls.predictions.decoder``, GPT-2's ``lm_head``), found by
    identity whatever the names are."""
    if len(names) < 2 or t.dim() != 2:
        return False
    emb = [isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and loc == "weight" for _, _, m, loc in names]
    head = [not e and loc == "weight" for e, (_, _, _, loc) in zip(emb, names)]
    return any(emb) and any(head)
