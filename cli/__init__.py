"""The ``fabric`` command line: ``fabric.cli.main:main``; one module per command group."""
