"""t2v_data: the prepare stage (sources -> WebDataset shards), the shard format every stage shares, the experiment
file, and the synthetic-shapes judge.

    Manifest, decode_sample, read_shard, ShardWriter       # t2v_data.shards: the shard format
    load_yaml, Paths                                       # t2v_data.experiment: the experiment file
    prepare_config, run_prepare                            # t2v_data.prepare_config / .prepare: the stage
    SOURCES                                                # t2v_data.registry: data.source names
    judge_video, judge_matches                             # t2v_data.judge: read shapes back from pixels
"""
