"""``python -m native_retriever ...`` runs the command line (so ``torchrun -m native_retriever train-head ...``
works)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
