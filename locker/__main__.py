"""``python -m locker``: the same as ``lockerd``."""

import sys

from locker.daemon import main

sys.exit(main())
