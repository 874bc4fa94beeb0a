"""Run the jaxmosaic command line from a checkout: `python cli.py --help`."""
from jaxmosaic.cli import main

main()
