"""vllm 0.33.0 utils/mem_utils.py:30-31 and utils/mem_constants.py:18."""

GiB_bytes = 1 << 30


def format_gib(b: int) -> str:
    return f"{round(b / GiB_bytes, 2)}"
