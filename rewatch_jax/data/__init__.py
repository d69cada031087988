"""Video/data pipeline: records, decoding, the Qwen2.5-VL processor, prepared datasets, Grain."""
