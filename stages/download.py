"""DVC stage ``download@<dataset>``: fetch the raw files (mnist, boston) or generate them (flower)."""

import argparse

from bplab.runner.client import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="one of the datasets listed in params.yaml, e.g. mnist")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    from bplab.params.load import load_params
    from bplab.pipeline.process import stage_process

    with stage_process(f"download@{args.dataset}"):
        params = load_params(args.params)
        from bplab.pipeline.data_stages import download

        download(args.dataset, params)


if __name__ == "__main__":
    run_stage(main)
