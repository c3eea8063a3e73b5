"""vllm 0.33.0 platforms: the double's platform is always CUDA.

vLLM picks CUDA when NVML sees a GPU on the node (platforms/__init__.py:55-107,
cuda_platform_plugin), whatever the process's CUDA_VISIBLE_DEVICES says: NVML sees every
device. So a process of a GPU node that may use no GPU (``CUDA_VISIBLE_DEVICES=""``) is
still on the CUDA platform, and one with the variable unset may use every GPU.
"""

from __future__ import annotations

from .._double import hw


class CudaPlatform:
    """The parts of vllm/platforms/cuda.py and interface.py the double and the project use."""

    device_name = "cuda"
    device_type = "cuda"
    dispatch_key = "CUDA"
    ray_device_key = "GPU"
    dist_backend = "nccl"
    device_control_env_var = "CUDA_VISIBLE_DEVICES"
    simple_compile_backend = "inductor"
    supported_dtypes = ["bfloat16", "float16", "float32"]  # interface/cuda: bf16 first on sm80+

    def is_cuda(self) -> bool:
        return True

    def is_cuda_alike(self) -> bool:
        return True

    def is_rocm(self) -> bool:
        return False

    def is_xpu(self) -> bool:
        return False

    def is_tpu(self) -> bool:
        return False

    def is_cpu(self) -> bool:
        return False

    def is_out_of_tree(self) -> bool:
        return False

    def is_sleep_mode_available(self) -> bool:
        # interface.py:231-236
        return True

    def is_cumem_allocator_available(self) -> bool:
        return True

    @classmethod
    def device_count(cls) -> int:
        # cuda.py:634-635 -> torch.cuda._device_count_nvml(), which honours CUDA_VISIBLE_DEVICES
        return len(hw.visible_gpus())

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return hw.gpu_name()

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        visible = hw.visible_gpus()
        return hw.gpu_total_bytes(visible[device_id] if device_id < len(visible) else 0)

    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> tuple[int, int]:
        return (9, 0)

    @classmethod
    def check_max_model_len(cls, max_model_len: int) -> int:
        return max_model_len


current_platform = CudaPlatform()

__all__ = ["CudaPlatform", "current_platform"]
