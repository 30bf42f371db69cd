"""torchinit: initialize PyTorch models correctly, reproducibly, fast, at any
scale, and with evidence that the result is healthy.

The public API is what this module exports. The layers, bottom to top (see
docs/architecture.md): ``core`` (fans, gains, specs) -> ``engines`` (torch, keyed)
-> ``initializers`` (the drop-ins) -> ``model`` (policies, plans, routing) ->
``scale`` (materialize, weight files) -> ``evidence`` (diagnostics, LSUV) -> ``cli``.
"""

from ._version import __version__
from .core import specs
from .core.fans import Fans, compute_fans, module_fans, torch_fans
from .core.gains import calculate_gain, second_moment_gain
from .core.specs import spec_from_dict
from .initializers import (
    _DEPRECATED_NAMES,
    constant,
    constant_,
    delta_orthogonal_,
    dirac_,
    eye_,
    fill_,
    kaiming_normal_,
    kaiming_uniform_,
    lecun_normal_,
    lecun_uniform_,
    lstm_forget_bias_,
    normal_,
    ones_,
    orthogonal_,
    orthogonal_per_gate_,
    sparse_,
    trunc_normal_,
    trunc_normal_std_units_,
    uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
    zeros_,
)
from .initializers import (  # torch.nn.init's deprecated names: FutureWarning, then the call
    dirac,
    eye,
    kaiming_normal,
    kaiming_uniform,
    normal,
    orthogonal,
    sparse,
    uniform,
    xavier_normal,
    xavier_uniform,
)

__all__ = [
    "__version__",
    # fans and gains
    "Fans",
    "compute_fans",
    "module_fans",
    "torch_fans",
    "calculate_gain",
    "second_moment_gain",
    # specs
    "specs",
    "spec_from_dict",
    # torch.nn.init drop-ins
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
    # extras
    "fill_",
    "trunc_normal_std_units_",
    "variance_scaling_",
    "lecun_uniform_",
    "lecun_normal_",
    "delta_orthogonal_",
    # recurrent layers: per-gate orthogonal, LSTM forget-gate bias
    "orthogonal_per_gate_",
    "lstm_forget_bias_",
    # torch.nn.init's deprecated names without the underscore (FutureWarning)
    *_DEPRECATED_NAMES,
]

# Keyed engine: values as a pure function of (seed, name, element index).
from .engines import keyed  # noqa: E402
from .engines.keyed import Key  # noqa: E402

__all__ += ["Key", "keyed"]
# Model-level init: policies, plans, presets, routing of a model's own init code.
from .model import (  # noqa: E402
    PRESETS,
    EngineName,
    Plan,
    PlanEntry,
    Policy,
    PolicyError,
    Rule,
    apply_plan,
    get_preset,
    init_model,
    keyed_init_mode,
    load_policy,
    PresetName,
    track_init,
    IncompleteInitError,
    plan,
)

__all__ += ["plan", "init_model", "apply_plan", "Plan", "PlanEntry", "Policy", "PolicyError", "Rule",
            "load_policy", "PRESETS", "get_preset", "keyed_init_mode", "PresetName", "EngineName",
            "track_init", "IncompleteInitError"]
from .model.nonlinearity import NonlinearityWarning  # noqa: E402

__all__ += ["NonlinearityWarning"]
# Scale: meta-device materialization (sharded init lives in torchinit.sharding).
from . import zoo  # noqa: E402
from .scale import materialize  # noqa: E402

__all__ += ["materialize", "zoo"]
# muP: width-aware init and learning rates (model/mup.py)
from .model import MuP, MuRole  # noqa: E402

__all__ += ["MuP", "MuRole"]
# Evidence: diagnostics and data-dependent init.
from .evidence import Report, class_prior, data_init_, diagnose, lsuv_, prior_bias_  # noqa: E402

__all__ += ["diagnose", "Report", "lsuv_", "prior_bias_", "class_prior", "data_init_"]
from .evidence import CoordCheck, coord_check  # noqa: E402

__all__ += ["coord_check", "CoordCheck"]

# the flat layout's module paths (torchinit.specs, torchinit.keyed, torchinit.sharding...)
from . import _compat  # noqa: E402

_compat.install(__name__)
del _compat
