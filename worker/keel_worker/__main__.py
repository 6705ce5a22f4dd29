"""`python -m keel_worker`: see `keel_worker.main`."""

import sys

from keel_worker.main import main

sys.exit(main())
