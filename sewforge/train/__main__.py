"""``python -m sewforge.train ...`` is ``sewforge train ...``."""
import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
