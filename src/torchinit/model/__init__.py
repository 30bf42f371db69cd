"""Layer 4, model: what each tensor of a model gets, and writing it.

* :mod:`.policy` (rules, policies, their files), :mod:`.registry` and
  :mod:`.presets` (named policies);
* :mod:`.nonlinearity` (which activation follows each layer), :mod:`.calls`;
* :mod:`.resolve` (policy + model -> :class:`~.plan.Plan`), :mod:`.plan` (the plan),
  :mod:`.apply` (writing a plan with an engine);
* :mod:`.routing` and :mod:`.module_init` (a model's own init code, routed through
  the keyed engine).

Imports core, engines and the drop-in initializers; never scale, evidence or cli.
"""

from . import presets  # registers the presets where policies look names up
from .apply import apply_plan, init_model
from .errors import PolicyError
from .mup import MuP, MuRole
from .plan import EngineName, Plan, PlanEntry
from .policy import Policy, Rule, load_policy
from .registry import PRESETS, PresetName, get_preset
from .resolve import plan
from .routing import keyed_init_mode, track_init
from .audit import AuditReport, IncompleteInitError

__all__ = ["presets", "apply_plan", "init_model", "PolicyError", "Plan", "PlanEntry", "Policy", "Rule",
           "load_policy", "PRESETS", "get_preset", "plan", "keyed_init_mode", "PresetName", "EngineName",
           "track_init", "AuditReport", "IncompleteInitError"]
__all__ += ["MuP", "MuRole"]
