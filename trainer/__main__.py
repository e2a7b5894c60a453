"""``python -m trainer``: run ``trainer.cli.main``, then leave (at once when one rank of several)."""

import os
import sys

from trainer.cli import main
from trainer.ranks import rank_from_env

code = main()
if rank_from_env().multi:
    # One of several ranks: the exit record is written and the output flushed (``attempt.finish``). Leave now:
    # interpreter teardown runs torch.distributed's destructors, which wait seconds on a dead or finished
    # peer, and the monitor would SIGKILL this rank in the middle of that.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
