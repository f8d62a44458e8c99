"""ICM.py on the stand-in pipeline (tests/stand_in_pipeline.py): for tests that start runs as processes, such as
sweep.py --jobs. ``STAND_IN_SECONDS_PER_REQUEST`` slows each request, so a test can stop a run midway."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src.run  # noqa: E402
from core.process_exit import exit_process  # noqa: E402
from src.experiments import ICM  # noqa: E402
from tests.stand_in_pipeline import PromptHashRoute, StandInPipeline  # noqa: E402

DELAY = float(os.environ.get("STAND_IN_SECONDS_PER_REQUEST", "0"))
answer = PromptHashRoute.next_token_logprobs


def slow_answer(self, prompts):
    time.sleep(DELAY)
    return answer(self, prompts)


if __name__ == "__main__":
    PromptHashRoute.next_token_logprobs = slow_answer
    src.run.ScoringPipeline = StandInPipeline
    exit_process(ICM.main())
