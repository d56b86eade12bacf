"""`python -m diag` runs the CLI."""
from diag.cli import main

main()
