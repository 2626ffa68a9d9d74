"""Console faces: parse the command line, call one function, print, exit (ddtrain-train, -sweep, -bench, -launch)."""
