"""Run the Internal Coherence Maximization search on one testbed.

    python src/experiments/ICM.py --testbed demo --batch_size 8 --num_seed 4 --K 20
    cd src/experiments && python ICM.py --testbed truthfulQA --data-dir ../../../shared/data/icm ...

The command line only: flags (src/config/run_flags.py) -> RunConfig (src/config/run_config.py) -> run(config)
(src/run.py), and what ends the run -> an exit code.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from core.errors import UserError
from core.llm_api.redaction import scrub_credentials
from core.process_exit import exit_process
from src.cli.cli_errors import UsageError, network_error_line
from src.cli.stop_signals import SearchStopped
from src.config.run_config import RunConfig
from src.config.run_flags import build_parser, passed_flags
from src.run import run

__all__ = ["UsageError", "build_parser", "main"]  # what tests and scripts import from here


def main(argv: Optional[Sequence[str]] = None) -> int:
    """ICM.py with the flags ``argv`` (default: the command line's). Returns the exit code: 0, 2 after one
    ``error:`` line, the stop's code after Ctrl-C/SIGTERM (SearchStopped), 130 after a second Ctrl-C."""
    try:
        config = RunConfig.from_args(build_parser().parse_args(argv))
        run(config, frozenset(passed_flags(argv if argv is not None else sys.argv[1:])))
    except UserError as exc:
        print(f"error: {scrub_credentials(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the run reads or writes that the system refuses (permissions, a full disk)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}: check that the path exists, and that this user may read and "
              "write it", file=sys.stderr)
        return 2
    except SearchStopped as stopped:
        return stopped.exit_code
    except Exception as exc:  # a network error a model route let through
        if network_error_line(exc) is None:
            raise
        print(f"error: {scrub_credentials(network_error_line(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    exit_process(main())
