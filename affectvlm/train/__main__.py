"""`python -m affectvlm.train` and `torchrun -m affectvlm.train`: the same arguments as `affectvlm train`."""

import sys

from affectvlm.train.main import main

sys.exit(main())
