"""DVC stage ``evaluate@<variant>``: test metrics, pictures and a registry version for one variant."""

import argparse

from bplab.runner.client import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", help="a key under train: in params.yaml, e.g. mnist_mlp")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    from bplab.params.load import load_params
    from bplab.pipeline.process import stage_process

    with stage_process(f"evaluate@{args.variant}"):
        params = load_params(args.params)
        from bplab.pipeline.evaluate import evaluate

        evaluate(args.variant, params)


if __name__ == "__main__":
    run_stage(main)
