"""vllm 0.33.0 device_allocator/__init__.py: the sleep-mode allocator of the platform (CUDA: CuMem)."""

DEFERRABLE_TAGS: tuple[str, ...] = ("weights", "kv_cache")


def get_mem_allocator_instance():
    from .cumem import CuMemAllocator

    return CuMemAllocator.get_instance()
