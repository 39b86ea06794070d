"""`python -m mnistgan COMMAND ...`, the same as the `mnistgan` console script."""

from mnistgan.cli import main

raise SystemExit(main())
