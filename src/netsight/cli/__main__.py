"""``python -m netsight.cli``: the same as the ``netsight`` command."""

from __future__ import annotations

from netsight.cli import main

raise SystemExit(main())
