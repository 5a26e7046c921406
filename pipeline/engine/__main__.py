"""`python -m pipeline.engine`: builds Prism (see `pipeline.engine`); the standard
library is all it needs, so the system's Python runs it from a clone too."""

import sys

from pipeline.engine import main

sys.exit(main())
