"""`python -m llmd`: the `llmd` command (llmd/cli/)."""

from llmd.cli import main

raise SystemExit(main())
