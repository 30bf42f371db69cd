"""Layer 6, evidence: is the initialized model healthy?

:mod:`.diagnostics` (measure the signal through a forward and backward pass and
judge it), :mod:`.plots`, and :mod:`.lsuv` (data-dependent init). Imports every
lower layer; nothing below imports it.
"""

from .coord_check import CoordCheck, coord_check
from .diagnostics import Report, diagnose
from .lsuv import class_prior, data_init_, lsuv_, prior_bias_

__all__ = ["diagnose", "Report", "lsuv_", "prior_bias_", "class_prior", "data_init_"]
__all__ += ["coord_check", "CoordCheck"]
