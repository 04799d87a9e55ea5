"""`python -m layerstore` runs the command line."""

from .cli import run

run()
