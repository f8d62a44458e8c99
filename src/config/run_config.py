"""One run's configuration: every setting of an ICM run, typed, nested by concern, each with its one default.

    RunConfig
      data     DataConfig      which claims: testbed, data files, the pool (size, shard, seed labels, seed)
      search   SearchConfig    the annealing: alpha, K, temperatures, the consistency repair, RNG draws
      prompts  PromptConfig    what the model sees and how its answer becomes a score
      route    RouteConfig     where the prompts are scored: model, route, rate limits, response cache
      invocation InvocationConfig  this command, not the run: where it writes, resume, the settings file
      paper_mode               every behaviour of the reference code that changes results

The command line (run_flags.build_parser) takes its defaults from these classes, so the CLI's defaults and the
library's are the same values. ``with_paper_mode`` and ``resumed`` are the two ways a config changes after the
flags are read; both refuse a contradicting flag by name.

run.json's and summary.json's "settings" are ``to_json()``: one flat JSON object keyed by setting name (the
flag's name with underscores, e.g. "batch_size", "label_style"), plus what used the gold labels ("gold_used_by",
and the older "consistency_key_from_gold"). It stays flat because every run on disk was written that way;
``from_json`` reads those too, including runs recorded before a setting existed (SETTINGS_BEFORE_THEY_EXISTED
says how such a run behaved). ``from_json`` is the only reader of recorded settings.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from src.cli.cli_errors import UsageError
from src.data.testbeds import TESTBED_SPECS
from src.pipeline.label_scores import LabelAbsent, TokenMatch
from src.prompts.prompts import LabelStyle, PromptLayout


@dataclass(frozen=True)
class DataConfig:
    """Which claims the run labels."""
    testbed: str = "gsm8k"
    data_dir: Optional[Path] = None  # folder with the paper's JSON files
    data: Optional[Path] = None  # one file of records (--testbed custom, or another file of a testbed's format)
    columns: Optional[str] = None  # "field=column,..." for --data; parsed by record_files.parse_columns
    no_gold_consistency: bool = False  # don't derive consistency keys from gold labels
    num_batches: Optional[int] = None  # split the data into this many shards (None: one pool of batch_size)
    batch_index: Optional[int] = None  # which shard this run labels (0-based)
    batch_size: int = 256  # claims in the pool (unused with num_batches)
    num_seed: int = 8  # claims that start with random labels, half True and half False
    seed: int = 27565976
    # Imbalance stress (Canavan et al. 2026): draw the pool with exactly this share of gold-True claims. It reads
    # the gold labels to subsample, so run.json records it among the settings that use gold; off under paper mode.
    true_share: Optional[float] = None
    # Draw the pool with this seed instead of --seed (the search's labels and draws still follow --seed), so runs
    # of several seeds label the same pool and their labels can be compared. None: the pool follows --seed.
    pool_seed: Optional[int] = None


@dataclass(frozen=True)
class SearchConfig:
    """The simulated annealing (Wen et al. 2025, Algorithm 1). The defaults are the reference code's."""
    alpha: float = 30.0  # weight of mutual predictability in the energy
    K: int = 3000  # search iterations
    consistency_fix_K: int = 10  # rounds of the consistency repair
    decay: float = 0.99  # of the exp schedule
    initial_T: float = 10.0
    final_T: float = 0.01
    scheduler: str = "log"  # "log" or "exp"
    allow_both_false: bool = False  # let the repair label both claims of a contradiction False
    # "reference": every pool evaluation also shuffles its inconsistent pairs with the search's RNG, as each of
    # the reference's pipelines does (ICM_tools.py:107), though only their count is used. "minimal": skip it.
    rng_draws: str = "reference"
    # "reference": once any round of a repair has helped, later rounds that don't help go on until
    # consistency_fix_K runs out (the reference never resets best_decision_id, ICM.py:87-134).
    # "stop-at-first-failure": stop at the first round that doesn't help. Same labels, other RNG draws.
    repair_loop: str = "reference"
    # Rounds of the repair after a proposed flip; None: consistency_fix_K. The reference hard-codes 10 (ICM.py:509).
    post_flip_fix_K: Optional[int] = None
    mp_reduce: str = "mean"  # mutual predictability: the reference's mean of the log-odds, or the paper's sum
    # Who labels the pool: "icm" (the search), or a cheap baseline on the same pool and scorer (src/search/baselines.py):
    # "random" labels, "bootstrap" (each round relabels every claim by its leave-one-out prediction), or
    # "bootstrap-consistency" (the same, with the consistency repair after each round).
    labeller: str = "icm"
    bootstrap_rounds: int = 10  # the bootstrap labellers' round limit (they stop earlier once no label changes)


@dataclass(frozen=True)
class PromptConfig:
    """What the model sees, and how its answer becomes a label score."""
    label_style: LabelStyle = "space-in-label"  # where the space before True/False goes
    token_match: TokenMatch = "whole"  # which tokens count as True/False ("substring": the reference's rule)
    # Order of the demonstrations: "tree" shares prefixes between prompts (prompts.py); "reference": pool order.
    prompt_layout: PromptLayout = "tree"
    label_logprobs: str = "auto"  # "auto": exact label logprobs where the server offers them; "topk": the top-20
    label_absent: LabelAbsent = "stop"  # an answer with no label token: stop the run, or the reference's floor (0)

    @property
    def exact_label_logprobs(self) -> bool:
        return self.label_logprobs == "auto"


@dataclass(frozen=True)
class RouteConfig:
    """Where the prompts are scored. None: what the environment and the settings file say."""
    model: Optional[str] = None  # model name on a server route, or a .gguf path on the embedded route
    use_vllm: Optional[bool] = None  # True: vLLM; False: the hosted API; None: vLLM when VLLM_BASE_URL is set
    deterministic: bool = False  # no prompt-cache reuse on the embedded route
    requests_per_minute: Optional[float] = None  # hosted API limits (override API_REQUESTS_PER_MINUTE, ...)
    tokens_per_minute: Optional[float] = None
    cache_dir: Optional[Path] = None  # where the response cache lives; None: the output directory
    no_cache: bool = False


@dataclass(frozen=True)
class InvocationConfig:
    """About this command, not the run: not recorded in run.json, free to change on resume."""
    output_dir: Optional[Path] = None  # None: results/<testbed>-K<K>-bs<batch>-seed<seed> (or the resumed run's)
    overwrite: bool = False
    resume: Optional[Path] = None  # the run directory to continue
    secrets: Optional[Path] = None  # settings file; None: SECRETS in the repo
    no_progress: bool = False


# What --paper-mode sets: every behaviour of the reference code that changes results (README, "Paper mode").
PAPER_MODE: dict[str, Any] = {
    "label_style": "reference",
    "token_match": "substring",
    "label_logprobs": "topk",
    "rng_draws": "reference",
    "repair_loop": "reference",
    "post_flip_fix_K": 10,
    "prompt_layout": "reference",
    "mp_reduce": "mean",
    "allow_both_false": False,
    "no_gold_consistency": False,
    "label_absent": "floor",
    "labeller": "icm",
    "true_share": None,
    "pool_seed": None,
}
# The hosted API's top-k under paper mode: the reference asks for 20.
PAPER_MODE_TOP_K = 20
# Runs recorded before a setting existed behaved like this; reading such a run (a resume) keeps that behaviour.
SETTINGS_BEFORE_THEY_EXISTED: dict[str, Any] = {
    "rng_draws": "minimal", "repair_loop": "stop-at-first-failure", "post_flip_fix_K": None, "mp_reduce": "mean",
    "paper_mode": False, "prompt_layout": "reference", "label_absent": "floor", "columns": None,
}
# What may read the gold labels beyond reporting, as run.json's "gold_used_by" names it.
GOLD_USERS = ("consistency_key", "true_share")
# Settings that may differ when a run is resumed: they don't change what the search computes. K and
# bootstrap_rounds only say how long the run goes on.
CHANGEABLE_ON_RESUME = {"K", "bootstrap_rounds", "no_progress", "secrets", "data_dir", "data", "columns", "cache_dir", "no_cache", "resume",
                        "output_dir", "overwrite"}
# The reference code's flags keep its spelling (underscores); ours use hyphens.
REFERENCE_FLAGS = {"alpha", "seed", "testbed", "model", "batch_size", "num_seed", "K", "consistency_fix_K", "decay",
                   "initial_T", "final_T", "scheduler"}
PATH_SETTINGS = ("data_dir", "data", "cache_dir", "output_dir", "resume", "secrets")


def flag(name: str) -> str:
    """The command-line flag of the setting ``name``, for messages that name it: "batch_size" -> "--batch_size",
    "label_style" -> "--label-style"."""
    return f"--{name}" if name in REFERENCE_FLAGS else "--" + name.replace("_", "-")


SECTIONS = {"data": DataConfig, "search": SearchConfig, "prompts": PromptConfig, "route": RouteConfig,
            "invocation": InvocationConfig}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    invocation: InvocationConfig = field(default_factory=InvocationConfig)
    paper_mode: bool = False

    # --- flat views: one value per setting name ---------------------------------------------------------------

    @staticmethod
    def setting_names() -> list[str]:
        """Every setting's name, section by section (the flat keys of to_json, and the parser's dests)."""
        return [f.name for section in SECTIONS.values() for f in fields(section)] + ["paper_mode"]

    def flat(self) -> dict[str, Any]:
        """Every setting by name, as typed values (Paths stay Paths)."""
        values: dict[str, Any] = {}
        for name in SECTIONS:
            values.update(asdict(getattr(self, name)))
        values["paper_mode"] = self.paper_mode
        return values

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "RunConfig":
        """A config from setting names to values; a name not given takes its default, unknown names are ignored.
        Path settings given as text become Paths."""
        def value(name: str) -> Any:
            v = values[name]
            return Path(v) if name in PATH_SETTINGS and isinstance(v, str) else v

        sections = {name: section(**{f.name: value(f.name) for f in fields(section) if f.name in values})
                    for name, section in SECTIONS.items()}
        return cls(**sections, **({"paper_mode": values["paper_mode"]} if "paper_mode" in values else {}))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        """The config of parsed flags (run_flags.build_parser)."""
        return cls.from_flat(vars(args))

    def setting(self, name: str) -> Any:
        return self.flat()[name]

    def with_settings(self, **values: Any) -> "RunConfig":
        """This config with the named settings changed (names as in to_json)."""
        return RunConfig.from_flat({**self.flat(), **values})

    # --- run.json ------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The run's settings as run.json and summary.json record them: flat, by setting name, paths as text,
        without the invocation's settings, plus what of the run used the gold labels: "gold_used_by" (GOLD_USERS
        that apply, [] for none) and, for readers older than that list, "consistency_key_from_gold"."""
        recorded = {name: (str(v) if isinstance(v, Path) else v) for name, v in self.flat().items()
                    if name not in INVOCATION_SETTINGS}
        return {**recorded, "consistency_key_from_gold": self.consistency_key_from_gold, "gold_used_by": self.gold_used_by}

    @classmethod
    def from_json(cls, settings: Mapping[str, Any]) -> "RunConfig":
        """The config recorded as ``settings`` (run.json's or summary.json's). A setting the run predates takes
        the behaviour runs had before it existed (SETTINGS_BEFORE_THEY_EXISTED), else its default; keys that are
        not settings (consistency_key_from_gold, gold_used_by) are ignored."""
        return cls.from_flat({**SETTINGS_BEFORE_THEY_EXISTED, **settings})

    @property
    def gold_used_by(self) -> list[str]:
        """What of this run reads the gold labels beyond reporting, in GOLD_USERS' order: "consistency_key" (the
        search's consistency rule), "true_share" (which claims enter the pool). Empty: the labels are unsupervised."""
        uses = {"consistency_key": self.consistency_key_from_gold, "true_share": self.data.true_share is not None}
        return [name for name in GOLD_USERS if uses[name]]

    @property
    def consistency_key_from_gold(self) -> bool:
        """Whether the search's consistency key is derived from the gold labels (then the labels are not unsupervised)."""
        return TESTBED_SPECS[self.data.testbed].key_from_gold and not self.data.no_gold_consistency

    # --- paper mode and resume -----------------------------------------------------------------------------------

    def with_paper_mode(self, passed: set[str]) -> "RunConfig":
        """Under paper_mode, the reference's behaviour for every setting in PAPER_MODE. A flag in ``passed`` (the
        settings given on the command line) that asks for something else is refused by name (UsageError) rather
        than silently overridden. Without paper_mode, the config as it is."""
        if not self.paper_mode:
            return self
        for name, value in PAPER_MODE.items():
            if name in passed and self.setting(name) != value:
                if value is None:  # --true-share, --pool-seed
                    raise UsageError(f"{flag(name)} {self.setting(name)} contradicts --paper-mode, which draws the pool "
                                     "as the reference does (whole groups at random by --seed); drop one of the two")
                if isinstance(value, bool):
                    raise UsageError(f"{flag(name)} contradicts --paper-mode, which follows the reference (without "
                                     f"{flag(name)}); drop one of the two")
                raise UsageError(f"{flag(name)} {self.setting(name)} contradicts --paper-mode, which sets {flag(name)} "
                                 f"{value}; drop one of the two")
        return self.with_settings(**PAPER_MODE)

    @classmethod
    def resumed(cls, saved_record: Mapping[str, Any], current: "RunConfig", passed: set[str]) -> "RunConfig":
        """The config of a resumed run: the settings ``saved_record`` (run.json) was started with, plus those of
        ``current`` (this command's) that may change on resume (CHANGEABLE_ON_RESUME) and were given (``passed``).
        A setting that may not change and was given with another value is refused by name (UsageError). The
        recorded data paths are relative to where the run started, so run.json's resolved ones replace them."""
        resume_dir = current.invocation.resume
        saved = {**SETTINGS_BEFORE_THEY_EXISTED, **saved_record["settings"]}
        now = current.to_json()
        for name in sorted(passed - CHANGEABLE_ON_RESUME):
            if name in saved and saved[name] != now.get(name):
                raise UsageError(f"--resume {resume_dir}: the run was started with {flag(name)} {saved[name]!r}, not "
                                 f"{now.get(name)!r}; drop {flag(name)} to resume it, or start a new run with --output-dir")
        merged = {**current.flat(), **{k: v for k, v in saved.items() if k not in passed or k not in CHANGEABLE_ON_RESUME}}
        resolved = saved_record.get("data") if isinstance(saved_record.get("data"), dict) else {}
        for name in ("data_dir", "data"):
            if name not in passed and isinstance(resolved.get(name), str):
                merged[name] = resolved[name]
        merged["output_dir"] = resume_dir
        return cls.from_flat(merged)


INVOCATION_SETTINGS = frozenset(f.name for f in fields(InvocationConfig))

