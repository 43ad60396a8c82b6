"""`python -m glmc ...`, the form torchrun launches: `torchrun --nproc_per_node N -m glmc train ...`."""

import sys

from glmc.cli import main

sys.exit(main())
