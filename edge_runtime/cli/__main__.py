"""`python -m edge_runtime.cli`: the `edgert` command from a source checkout."""

import sys

from edge_runtime.cli.main import main

sys.exit(main())
