"""Signal-propagation diagnostics, one idea a module:

* :mod:`.classify`: what kind of layer or call a module/op is;
* :mod:`.record`: what is recorded during the forward and backward passes;
* :mod:`.params`: statistics of the parameters themselves;
* :mod:`.verdicts`: the rules that turn statistics into verdicts;
* :mod:`.report`: the data (thresholds, statistics, verdicts, Report);
* :mod:`.run`: :func:`diagnose`; :mod:`.html`: comparison pages.
"""

from .html import comparison_html, save_comparison
from .report import LayerStats, ParamStats, Report, Thresholds, Verdict
from .run import diagnose

__all__ = ["diagnose", "Report", "LayerStats", "ParamStats", "Verdict", "Thresholds", "save_comparison",
           "comparison_html"]
