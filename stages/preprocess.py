"""DVC stage ``preprocess@<dataset>``: raw files to train/test arrays ready to train on."""

import argparse

from bplab.runner.client import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="one of the datasets listed in params.yaml, e.g. mnist")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    from bplab.params.load import load_params
    from bplab.pipeline.process import stage_process

    with stage_process(f"preprocess@{args.dataset}"):
        params = load_params(args.params)
        from bplab.pipeline.data_stages import preprocess

        preprocess(args.dataset, params)


if __name__ == "__main__":
    run_stage(main)
