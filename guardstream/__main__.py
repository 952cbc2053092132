"""`python -m guardstream`: the `guardstream` command."""

from guardstream.cli import main

main()
