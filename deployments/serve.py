"""Serve mm-mo's deployments without a work pool: one long-running process runs the flows.

    python deployments/serve.py [--study fixture-demo] [--storage ./studies] [--cron "0 2 * * *"]

Creates two deployments on the Prefect server (PREFECT_API_URL): ``merge-search/search-served``
(on demand, run it from the UI or with ``prefect deployment run``) and
``resume-search/nightly-resume-served`` (resumes the named study on the cron schedule).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import serve  # noqa: E402

from flows.search import merge_search, resume_search  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Parse options and serve both deployments until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="examples/fixture.yaml")
    parser.add_argument("--study", default="fixture-demo")
    parser.add_argument("--storage", default="./studies")
    parser.add_argument("--cron", default="0 2 * * *")
    args = parser.parse_args(argv)
    on_demand = merge_search.to_deployment(name="search-served",
                                           parameters={"spec": args.spec})
    nightly = resume_search.to_deployment(name="nightly-resume-served", cron=args.cron,
                                          parameters={"study": args.study,
                                                      "storage": args.storage})
    serve(on_demand, nightly)


if __name__ == "__main__":
    main()
