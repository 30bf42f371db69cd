"""``python -m torchinit.cli``: the same command as ``python -m torchinit`` and ``torchinit``."""

import sys

from . import main

sys.exit(main())
