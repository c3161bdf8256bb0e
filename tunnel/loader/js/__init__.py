"""Package data: JavaScript for the worker runtime (a package so that its *.js files ship)."""
