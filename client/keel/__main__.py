"""`python -m keel`: the `keel` command line (`keel.cli`) without its console script."""

import sys

from keel.cli import main

sys.exit(main())
