"""Layer 1, core: what distribution a tensor gets, as pure functions of shapes.

Fans (:mod:`.fans`), gains (:mod:`.gains`) and specs (:mod:`.specs`: a distribution
and its parameters, computed from shape, fans and gain). Nothing here draws a random
number or knows about modules beyond their shapes; every other layer builds on it.
"""

from . import specs
from . import gate_specs  # registers the gate specs' kinds for spec_from_dict
from .fans import Fans, compute_fans, module_fans, torch_fans
from .gains import calculate_gain, second_moment_gain

__all__ = ["specs", "gate_specs", "Fans", "compute_fans", "module_fans", "torch_fans", "calculate_gain",
           "second_moment_gain"]
