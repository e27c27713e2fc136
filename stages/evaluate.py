"""DVC stage ``evaluate@<variant>``: test metrics, pictures and a registry version for one variant."""

import argparse

from bplab.cli import stage_process
from bplab.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", help="a key under train: in params.yaml, e.g. mnist_mlp")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    with stage_process(f"evaluate@{args.variant}"):
        params = load_params(args.params)
        from bplab.evaluate import evaluate

        evaluate(args.variant, params)


if __name__ == "__main__":
    main()
