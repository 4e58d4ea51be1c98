"""Router benchmark: `python -m bench.router` (see __main__)."""
