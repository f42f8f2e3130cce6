"""`python -m neuroscribe.distill.collect ...` (what `accelerate launch -m` runs on every rank): the
`neuroscribe collect` command."""

import sys

from neuroscribe.cli import app

app(["collect", *sys.argv[1:]], prog_name="neuroscribe.distill.collect")
