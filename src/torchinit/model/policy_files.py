"""Reading a policy from a file or from inline text (YAML or JSON), with every size the
text controls bounded.

A policy file is data from elsewhere: YAML aliases let a few hundred bytes describe a
structure of a billion nodes ("billion laughs"), which is cheap to load (aliases share
one object) but not to print or walk. So, before a policy sees the data:

* the file holds at most :data:`MAX_FILE_BYTES` bytes and is UTF-8 text;
* nesting is at most :data:`MAX_DEPTH` levels deep (deeper YAML or JSON would end in a
  ``RecursionError``);
* the data, expanded (each alias counted at every use), holds at most
  :data:`MAX_NODES` values and :data:`MAX_CHARS` characters of strings; an alias to
  its own node (a recursive structure) is refused;
* a mapping that gives the same key twice is refused (YAML: naming the key and both
  lines), where YAML and JSON parsers keep the last value silently.

Every refusal is a :class:`PolicyError` naming the file (or "policy" for inline text).
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

from .errors import PolicyError, _short

__all__ = ["read_policy_text", "parse_policy_text", "MAX_FILE_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_CHARS"]

#: Largest policy file read (bytes).
MAX_FILE_BYTES = 4 * 2**20
#: Deepest nesting of mappings and lists.
MAX_DEPTH = 32
#: Most values (mappings, lists, scalars, keys) in the expanded data.
MAX_NODES = 200_000
#: Most string characters in the expanded data.
MAX_CHARS = 8 * 2**20


def read_policy_text(path: str | os.PathLike) -> str:
    """The text of the policy file ``path`` (PolicyError naming it when it is too big or not UTF-8)."""
    where = f"policy file {os.fspath(path)}"
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(f"{where}: larger than {MAX_FILE_BYTES} bytes; a policy is a short list of rules")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None


def parse_policy_text(text: str, where: str, *, json_only: bool = False) -> Any:
    """Parse ``text`` as YAML (a superset of JSON) or, with ``json_only``, as JSON, then
    check its sizes (module docstring). ``where`` ("policy file X" or "policy") starts
    every error message."""
    if len(text) > MAX_FILE_BYTES:
        raise PolicyError(f"{where}: longer than {MAX_FILE_BYTES} characters; a policy is a short list of rules")
    try:
        data = _parse_json(text, where) if json_only else _parse_yaml(text, where)
    except RecursionError:  # nesting deeper than the parser's stack (before our own depth check)
        raise PolicyError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    check_sizes(data, where)
    return data


def _parse_json(text: str, where: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise PolicyError(f"{where}: duplicate key {_short(k)} in a JSON object (the first value would be "
                                  "ignored)", field=k if len(k) <= 80 else None)
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{where}: invalid JSON: {exc}") from None


def _parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        msg = str(exc).replace('in "<unicode string>", ', "")  # PyYAML's name for the text we passed
        raise PolicyError(f"{where}: invalid YAML: {_short(msg, 400, quote=False)}") from None


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """PyYAML's safe loader with

    * ``1e-3`` and ``2.0e5`` read as floats: PyYAML follows YAML 1.1, whose floats need a
      dot and a signed exponent, so ``std: 1e-3`` was the string ``'1e-3'`` (YAML 1.2 and
      JSON read a number);
    * nesting deeper than :data:`MAX_DEPTH` refused while composing (the composer recurses
      once per level);
    * a key given twice in one mapping refused, naming it and both lines (merge keys
      ``<<:`` may still be overridden, as YAML specifies).
    """
    import re

    import yaml
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError
    from yaml.nodes import ScalarNode

    class _Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                        self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            if hasattr(node, "value") and isinstance(node.value, list):
                seen: dict[tuple[str, str], int] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise ConstructorError(
                            None, None, f"duplicate key {_short(key_node.value)} at line {line} (first at line "
                            f"{seen[key]}): give each key once", key_node.start_mark)
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?|[-+]?\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    return _Loader


def check_sizes(data: Any, where: str) -> None:
    """Raise PolicyError unless ``data`` (parsed YAML/JSON, possibly sharing objects through
    aliases) is within :data:`MAX_DEPTH`, :data:`MAX_NODES` and :data:`MAX_CHARS` once
    expanded, and free of cycles. Shared objects are measured once (memo by id), so the
    check costs the size of the text, not of the expansion; no recursion."""
    memo: dict[int, tuple[int, int, int]] = {}  # id -> (values, characters, depth), expanded
    open_: set[int] = set()  # containers whose children are being measured (a cycle returns to one)

    def children(obj: Any) -> list[Any]:
        return [*obj.keys(), *obj.values()] if isinstance(obj, dict) else list(obj)

    def size(obj: Any) -> tuple[int, int, int]:
        if isinstance(obj, (dict, list)):
            return memo[id(obj)]
        return 1, len(obj) if isinstance(obj, str) else 0, 0

    if not isinstance(data, (dict, list)):
        return
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        obj, done = stack.pop()
        key = id(obj)
        if not done:
            if key in memo:
                continue
            if key in open_:
                raise PolicyError(f"{where}: a YAML alias refers to a node that contains it (a recursive "
                                  "structure); a policy is a tree")
            open_.add(key)
            stack.append((obj, True))
            stack.extend((c, False) for c in children(obj) if isinstance(c, (dict, list)) and id(c) not in memo)
            continue
        open_.discard(key)
        nodes, chars, depth = 1, 0, 0
        for c in children(obj):
            n, ch, d = size(c)
            nodes, chars, depth = nodes + n, chars + ch, max(depth, d)
        depth += 1
        memo[key] = (nodes, chars, depth)
        if depth > MAX_DEPTH:
            raise PolicyError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if nodes > MAX_NODES or chars > MAX_CHARS:
            raise PolicyError(f"{where}: too large once YAML aliases are expanded ({nodes:,} values, {chars:,} "
                              f"characters; at most {MAX_NODES:,} and {MAX_CHARS:,}): a policy is a short list of "
                              "rules")


def _is_inline(text: str) -> bool:
    """Whether ``text`` is a policy's JSON/YAML text rather than a preset name or a path: it
    starts with ``{`` or ``[``, spans lines, or starts with a ``key: `` of YAML."""
    head = text.lstrip()
    return head.startswith(("{", "[")) or "\n" in head.rstrip() or re.match(r"^[A-Za-z_]\w*:\s", head) is not None
