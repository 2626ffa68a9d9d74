"""`python -m ddtrain.sweep`: the same as the console script ddtrain-sweep (ddtrain.cli.sweep)."""

from ddtrain.cli.sweep import main

main()
