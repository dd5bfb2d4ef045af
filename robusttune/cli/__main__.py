"""``python -m robusttune.cli``: the same as the ``robusttune`` command."""

import sys

from robusttune.cli import main

sys.exit(main())
