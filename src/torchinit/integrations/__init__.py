"""Layer 8, integrations: torchinit where training already happens.

* :mod:`.lightning`: ``InitCallback`` for the Lightning ``Trainer``, ``init_fabric_module`` and
  ``diagnose_batch`` for ``Fabric`` (needs ``torchinit[lightning]``);
* :mod:`.hf`: ``DiagnoseCallback`` for the Hugging Face ``Trainer`` and ``from_config``
  (needs ``torchinit[hf]``);
* :mod:`.checks`: what they share: initializing a module (eager, empty-init or meta),
  diagnosing the first batch, logging the report, ``InitVerdictError``.

TensorBoard and W&B logging is :meth:`torchinit.Report.log`. This package imports no
optional dependency; its submodules import theirs.
"""

from .checks import InitVerdictError

__all__ = ["InitVerdictError"]
