"""Layer 5, scale: models that do not fit the usual flow.

:mod:`.materialize` fills a meta-device (or sharded) model straight into its final
storage; :mod:`.weights` writes and reads weight files with their plan.
Imports core, engines and model.
"""

from .materialize import materialize

__all__ = ["materialize"]
