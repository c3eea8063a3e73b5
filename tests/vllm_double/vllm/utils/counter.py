"""vllm 0.33.0 utils/counter.py:6-18: the request-id counter ``LLM.request_counter`` is."""


class Counter:
    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.counter = start

    def __next__(self) -> int:
        i = self.counter
        self.counter += 1
        return i

    def reset(self) -> None:
        self.counter = 0
