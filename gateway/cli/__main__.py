"""``python -m gateway.cli``: the ``quantgate`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
