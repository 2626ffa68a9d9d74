"""`python -m ddtrain.bench`: the same as the console script ddtrain-bench (ddtrain.cli.bench)."""

from ddtrain.cli.bench import main

if __name__ == "__main__":
    main()
