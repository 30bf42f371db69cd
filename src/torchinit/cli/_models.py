"""Resolve a MODEL argument of the command line into an ``nn.Module``.

MODEL is one of

* a zoo name (``mlp``, ``cnn``, ``resnet``, ``gpt``; see :mod:`torchinit.zoo`);
* ``package.module:factory``: imports ``package.module`` and calls ``factory(**kwargs)``;
* ``path/to/file.py:factory``: executes ``file.py`` as a module and calls ``factory(**kwargs)``;
* ``hf:TYPE`` (``hf:gpt2``, ``hf:llama``) or ``hf:path/to/config.json`` (or a folder holding
  one): a Hugging Face transformers model built offline from its config (no download, no
  weights), ``kwargs`` overriding config fields; the class is the config's
  ``architectures[0]`` where it names one, else the causal-LM class of a decoder-only type,
  the seq2seq class of an encoder-decoder one, ``AutoModel`` otherwise; ``hf:TYPE:CLASS``
  names the class (``hf:bert:BertForMaskedLM``).

Importing a module or loading a file RUNS ITS CODE with the user's permissions:
only load models you trust.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import zoo

__all__ = ["load_model", "resolve_factory", "parse_kwargs", "parse_example_inputs", "meta_device", "ModelBuildError"]


class ModelBuildError(RuntimeError):
    """MODEL's factory raised while building the model (its code or its ``--kwargs`` are at
    fault); the command line prints the message, the original exception is its ``__cause__``."""


class _SkipRandomOnMeta(TorchFunctionMode):
    """In-place random fills of META tensors return at once (they compute nothing anyway).

    torch routes ``Tensor.normal_`` on meta through ``torch._refs``, whose first call
    imports torch._dynamo: ~3 s of one-time setup for any model with an ``nn.Embedding``
    built on meta. Skipping the no-op avoids it.
    """

    _OPS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_,
                      torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
                      torch.Tensor.geometric_, torch.Tensor.bernoulli_}
                     # torch.nn.init functions that dispatch through handle_torch_function themselves
                     | {getattr(torch.nn.init, n) for n in ("uniform_", "normal_", "constant_", "kaiming_uniform_")
                        if hasattr(torch.nn.init, n)})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._OPS:
            t = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """``with torch.device("meta")``, minus the cost of the constructors' random init calls."""
    with torch.device("meta"), _SkipRandomOnMeta():
        yield


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Parse the ``--kwargs`` JSON object (None or empty -> ``{}``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kwargs must be a JSON object, e.g. '{{\"depth\": 10}}': {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--kwargs must be a JSON object (a dict), got {type(value).__name__}: {text}")
    return value


#: Third-party modules the command imports after building the model (policy files, weight
#: files, tables): imported BEFORE the model's folder goes on ``sys.path``, so that a
#: ``yaml.py`` beside the model cannot stand in for PyYAML.
_DEPENDENCIES = ("yaml", "safetensors", "safetensors.torch", "rich.console", "rich.table", "rich.text",
                 "rich.progress")


def _import_dependencies() -> None:
    for name in _DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:  # optional here; the code that needs it says so
            pass


@contextlib.contextmanager
def _import_from(folder: str | None) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` while the model's code runs (its import and its
    factory), as Python does for the script's folder or, under ``python -m``, the current
    one (the ``torchinit`` console script gets neither); removed afterwards, so the
    command's own later imports never come from the model's folder."""
    if folder is None or folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:  # the model's code removed it itself
            pass


_SHAPE = re.compile(r"^\d+(x\d+)*$")
_NAMED_SHAPE = re.compile(r"^[A-Za-z_]\w*:\d+(x\d+)*$")
_EXPR_BUILTINS = {n: getattr(builtins, n) for n in ("dict", "list", "tuple", "range", "int", "float", "len", "True",
                                                      "False", "None")}


def _tensor_of_shape(name: str, shape: str) -> torch.Tensor:
    dims = tuple(int(d) for d in shape.split("x"))
    if name.endswith(("ids", "mask")) or name in ("labels", "position_ids"):
        return torch.zeros(dims, dtype=torch.long)  # token ids and masks: integer, 0 is a valid id
    return torch.randn(dims, generator=torch.Generator().manual_seed(0))  # seeded: the same plan every run


def parse_example_inputs(text: str | None) -> Any:
    """Parse ``--example-inputs``: None -> None; a shape ``2x3x224x224`` -> a float tensor (seeded
    normal); ``input_ids:1x16`` or several ``name:shape`` separated by commas -> a dict of
    keyword inputs (names ending in ``ids`` or ``mask``: int64 zeros); anything else is a Python
    expression evaluated with ``torch`` in scope (``"torch.randint(0, 100, (1, 16))"``,
    ``"{'input_ids': torch.zeros(1, 8, dtype=torch.long)}"``), a tensor, tuple or dict."""
    if text is None:
        return None
    t = text.strip()
    if _SHAPE.match(t):
        return _tensor_of_shape("", t)
    parts = [x.strip() for x in t.split(",")]
    if all(_NAMED_SHAPE.match(x) for x in parts):
        return {n: _tensor_of_shape(n, sh) for n, sh in (x.split(":") for x in parts)}
    try:
        value = eval(t, {"__builtins__": _EXPR_BUILTINS, "torch": torch}, {})  # noqa: S307 (a CLI argument)
    except Exception as exc:
        raise ValueError(f"--example-inputs {text!r} is neither a shape (2x3x224x224), name:shape pairs "
                         f"(input_ids:1x16) nor a Python expression that evaluates: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, (torch.Tensor, tuple, list, dict)):
        raise ValueError(f"--example-inputs {text!r} must give a tensor, a tuple/list of inputs or a dict of "
                         f"keyword inputs, got {type(value).__name__}")
    return value


def resolve_factory(spec: str) -> tuple[str, Callable[..., Any]]:
    """Return ``(description, callable)`` for a MODEL spec (see module docstring)."""
    desc, factory, _ = _resolve(spec)
    return desc, factory


def _resolve(spec: str) -> tuple[str, Callable[..., Any], str | None]:
    """``(description, callable, folder the model's code imports from or None)``."""
    _import_dependencies()
    if not isinstance(spec, str) or not spec:
        raise ValueError("MODEL must be a non-empty string: a zoo name, package.module:factory or file.py:factory")
    if spec in zoo.ZOO:
        return f"zoo:{spec}", lambda **kw: zoo.build(spec, **kw), None
    if spec.startswith("hf:"):
        return spec, _hf_factory(spec), None
    if ":" not in spec:
        raise ValueError(
            f"unknown model {spec!r}: not a zoo name ({', '.join(zoo.ZOO)}) and not of the form "
            f"package.module:factory or path/to/file.py:factory"
        )
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"model {spec!r}: expected 'module:factory' with both parts non-empty")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {target}")
        folder = os.path.dirname(path)  # as `python file.py`: modules beside it import
        mod_name = f"_torchinit_user_model_{abs(hash(path))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ImportError(f"cannot load {target} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling need the module registered
        try:
            with _import_from(folder):
                loader_spec.loader.exec_module(module)
        except SyntaxError as exc:  # not Python: say where, without a traceback of the loader
            sys.modules.pop(mod_name, None)
            raise ImportError(f"model {spec!r}: {target} is not valid Python: {exc.msg} (line {exc.lineno})") from None
        except SystemExit as exc:  # the module's top level called sys.exit()
            sys.modules.pop(mod_name, None)
            raise ModelBuildError(f"model {spec!r}: {target} called sys.exit({exc.code!r}) while being imported"
                                  ) from None
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
    else:
        folder = os.getcwd()  # as `python -m`: packages in the current folder import
        try:
            with _import_from(folder):
                module = importlib.import_module(target)
        except SystemExit as exc:
            raise ModelBuildError(f"model {spec!r}: {target} called sys.exit({exc.code!r}) while being imported"
                                  ) from None
        except ModuleNotFoundError as exc:
            raise ImportError(f"model {spec!r}: cannot import module {target!r} ({exc})") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"model {spec!r}: {target} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"model {spec!r}: {attr!r} is not callable (got {type(factory).__name__})")
    return spec, factory, folder


def _hf_factory(spec: str) -> Callable[..., nn.Module]:
    """The factory of an ``hf:`` MODEL (module docstring): ``factory(**config_overrides)``."""
    body = spec[3:]
    name, cls_name = body, None
    if not body:
        raise ValueError("model 'hf:': name a model type (hf:gpt2) or a config file (hf:path/to/config.json)")
    if ":" in body and not os.path.exists(body):
        name, _, cls_name = body.rpartition(":")
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"model {spec!r}: hf: models need transformers (pip install transformers): {exc}") from None
    from transformers import AutoConfig

    if name.endswith(".json") or os.sep in name or "/" in name or os.path.isdir(name):
        path = os.path.join(name, "config.json") if os.path.isdir(name) else name
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model {spec!r}: config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                fields = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"model {spec!r}: {path} is not a JSON config: {str(exc)[:200]}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
            raise ValueError(f"model {spec!r}: {path} has no 'model_type' (a Hugging Face config.json has one)")
        model_type = fields.pop("model_type")
    else:
        model_type, fields = name, {}
    try:
        config_class = type(AutoConfig.for_model(model_type))
    except (ValueError, KeyError):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        from ..model.errors import _suggest

        raise ValueError(f"model {spec!r}: unknown Hugging Face model type {model_type!r}"
                         f"{_suggest(model_type, list(CONFIG_MAPPING.keys()))}") from None

    def factory(**overrides: Any) -> nn.Module:
        default = config_class()
        unknown = [k for k in overrides if not hasattr(default, k)]
        if unknown:  # a config takes any keyword silently: a typo would change nothing
            raise TypeError(f"model {spec!r} rejected --kwargs: {config_class.__name__} has no field {unknown[0]!r}")
        config = config_class(**{**fields, **overrides})
        cls = _hf_class(spec, transformers, config, cls_name)
        return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)

    return factory


def _hf_class(spec: str, transformers: Any, config: Any, cls_name: str | None) -> Any:
    """The transformers class an ``hf:`` MODEL builds (see the module docstring)."""
    if cls_name is not None:
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            raise ValueError(f"model {spec!r}: transformers has no class {cls_name!r}")
        return cls
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    from transformers.models.auto import modeling_auto as ma

    mt = config.model_type
    if getattr(config, "is_encoder_decoder", False) and mt in ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForSeq2SeqLM
    if mt in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM  # decoder-only (BERT-likes have a causal head too)
    return transformers.AutoModel


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model named by ``spec`` with ``kwargs`` (a dict, e.g. parsed from ``--kwargs``).

    The model is built on the current default device; wrap the call in
    ``with torch.device("meta"):`` to build it without allocating storage.
    Raises ValueError / TypeError / ImportError / FileNotFoundError with a message
    naming the spec when it cannot be resolved or does not return an ``nn.Module``.
    """
    kwargs = dict(kwargs or {})
    desc, factory, folder = _resolve(spec)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C types have no signature: just call them
        sig = None
    if sig is not None:
        try:  # check the kwargs against the signature only: a TypeError raised inside the factory propagates
            sig.bind(**kwargs)
        except TypeError as exc:
            raise TypeError(f"model {desc!r} rejected --kwargs {json.dumps(kwargs)}: {exc}") from None
    try:
        with _import_from(folder):  # a factory may import modules beside it
            model = factory(**kwargs)
    except SystemExit as exc:  # the factory gave up: one line, not a silent exit with its code
        at = _user_frame(exc.__traceback__)
        raise ModelBuildError(f"model {desc!r} called sys.exit({exc.code!r}){f' at {at}' if at else ''} instead of "
                              "returning a model") from None
    except Exception as exc:  # the user's code: say which model, where, and (on meta) what to try
        at = _user_frame(exc.__traceback__)
        with_kw = f" with --kwargs {json.dumps(kwargs)}" if kwargs else ""
        hint = ""
        if torch.get_default_device().type == "meta" and "meta" in str(exc).lower():
            hint = ("; the model was built on the meta device (no data), which this factory's code does not "
                    "support (.item(), numpy, data-dependent code): pass --no-meta")
        raise ModelBuildError(f"model {desc!r} raised {type(exc).__name__}{with_kw}"
                              f"{f' at {at}' if at else ''}: {exc}{hint}") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {desc!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _user_frame(tb: Any) -> str:
    """``file:line`` of the deepest traceback frame outside the standard library, installed
    packages and torchinit (the user's own code), or ``""``."""
    import sysconfig
    import traceback

    paths = sysconfig.get_paths()
    skip = [os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "purelib", "platlib")]
    skip.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)  # torchinit
    where = ""
    for fs in traceback.extract_tb(tb):
        if not os.path.abspath(fs.filename).startswith(tuple(skip)):
            where = f"{fs.filename}:{fs.lineno}"
    return where
