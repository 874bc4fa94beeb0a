"""`python -m jaxmosaic.cli`: the command line, as the `jaxmosaic` script runs it."""

from jaxmosaic.cli import main

main()
