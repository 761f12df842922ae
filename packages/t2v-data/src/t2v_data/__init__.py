"""t2v_data: the prepare stage (sources → WebDataset shards), shard readers, and the synthetic-shapes judge.

Stable API for the other stages:
    read_manifest(dir), iter_samples(dir, split), shard_paths(dir, split)      # t2v_data.shards
    judge_video(frames, ...), judge_matches(attributes, judgement)             # t2v_data.judge
    heldout_prompts(cfg, n, seed)                                              # t2v_data.shapes
    PrepareConfig, run_prepare(cfg, seed)                                      # config / stage
"""

from .errors import DataError
from .judge import Judgement, judge_matches, judge_video
from .prepare import PrepareSummary, run_prepare
from .prepare_config import PrepareConfig
from .shapes import heldout_prompts
from .shards import iter_samples, read_manifest, shard_paths

__all__ = [
    "DataError",
    "Judgement",
    "PrepareConfig",
    "PrepareSummary",
    "heldout_prompts",
    "iter_samples",
    "judge_matches",
    "judge_video",
    "read_manifest",
    "run_prepare",
    "shard_paths",
]
