"""`python -m ddtrain.train`: the same as the console script ddtrain-train (ddtrain.cli.train)."""

from ddtrain.cli.train import main

if __name__ == "__main__":
    main()
