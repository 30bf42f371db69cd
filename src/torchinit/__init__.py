"""torchinit: initialize PyTorch models correctly, reproducibly, fast, at any
scale, and with evidence that the result is healthy.

The public API is what this module exports.
"""

from .fans import Fans, compute_fans, module_fans, torch_fans
from .gains import calculate_gain, second_moment_gain
from .initializers import (
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
    normal_,
    ones_,
    orthogonal_,
    sparse_,
    trunc_normal_,
    trunc_normal_std_units_,
    uniform_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
    zeros_,
)
from .initializers import _DEPRECATED_NAMES
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
from . import specs
from .specs import spec_from_dict

__version__ = "0.1.0"

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
    # torch.nn.init's deprecated names without the underscore (FutureWarning)
    *_DEPRECATED_NAMES,
]

# Keyed engine: values as a pure function of (seed, name, element index).
from . import keyed
from .keyed import Key

__all__ += ["Key", "keyed"]
# Model-level init: policies, plans, presets, routing of a model's own init code.
from .policy import Policy, PolicyError, Rule, load_policy
from .plan import Plan, PlanEntry, apply_plan, init_model, plan
from .presets import PRESETS, get_preset
from .routing import keyed_init_mode

__all__ += ["plan", "init_model", "apply_plan", "Plan", "PlanEntry", "Policy", "PolicyError", "Rule",
            "load_policy", "PRESETS", "get_preset", "keyed_init_mode"]
# Scale: meta-device materialization (sharded init lives in torchinit.sharding).
from . import zoo
from .materialize import materialize

__all__ += ["materialize", "zoo"]
# Evidence: diagnostics and data-dependent init.
from .diagnostics import Report, diagnose
from .lsuv import class_prior, data_init_, lsuv_, prior_bias_

__all__ += ["diagnose", "Report", "lsuv_", "prior_bias_", "class_prior", "data_init_"]
