"""``python -m iapas`` runs the command line."""

from iapas.cli import main

main()
