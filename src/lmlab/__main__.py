"""`python -m lmlab ...` (and `torchrun ... -m lmlab train ...`): the same as the `lmlab` command."""
import sys

from .cli import main

sys.exit(main())
