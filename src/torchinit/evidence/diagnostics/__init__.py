"""Signal-propagation diagnostics, one idea a module:

* :mod:`.classify`: what kind of layer or call a module/op is;
* :mod:`.record`: what is recorded during the forward and backward passes;
* :mod:`.params`: statistics of the parameters themselves;
* :mod:`.verdicts`: the rules that turn statistics into verdicts;
* :mod:`.report`: the data (thresholds, statistics, verdicts, Report);
* :mod:`.stream`: the residual stream between blocks;
* :mod:`.run`: :func:`diagnose`; :mod:`.html`: the HTML report and notebook display.
"""

from .html import Comparison, comparison_html, save_comparison
from .report import LayerStats, ParamStats, Report, Thresholds, Verdict
from .run import diagnose

__all__ = ["diagnose", "Report", "LayerStats", "ParamStats", "Verdict", "Thresholds", "save_comparison",
           "comparison_html", "Comparison"]
