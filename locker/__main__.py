"""``python -m locker``: the same as ``lockerd``."""

import sys

from locker.cabinet.daemon import main

sys.exit(main())
