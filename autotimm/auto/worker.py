"""``python -m autotimm.auto.worker PAYLOAD INDEX``: one local worker process of a parallel search.

Started by `autotimm.auto.processes.start_workers`: it confines itself to its
slot (CPU cores, or one GPU through ``CUDA_VISIBLE_DEVICES``), joins the
search's study and runs trials until the shared deadline.
"""

from __future__ import annotations

import pickle
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the worker given by ``argv`` (``[payload path, worker index]``); return the exit code."""
    from autotimm.auto.processes import apply_slot, dump_stack_on_sigterm

    dump_stack_on_sigterm()  # first: a worker still importing when it is stopped says so in its log
    from autotimm.auto.search import run_request

    path, index = (argv if argv is not None else sys.argv[1:])[:2]
    with open(path, "rb") as handle:
        payload = pickle.load(handle)
    apply_slot(payload["slots"][int(index)])
    run_request(payload["request"], worker=int(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
