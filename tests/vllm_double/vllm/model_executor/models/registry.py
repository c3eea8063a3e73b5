"""vllm 0.33.0 model_executor/models/registry.py: the text-generation architectures it runs natively.

TEXT_GENERATION_ARCHS are the keys of ``_TEXT_GENERATION_MODELS`` (registry.py:73-218). An
architecture outside it is refused as registry.py:1249-1252 refuses it. (vLLM can also run
some other architectures through its Transformers backend; the double does not, so what it
accepts vLLM accepts.)
"""

from __future__ import annotations

TEXT_GENERATION_ARCHS = (
    "AfmoeForCausalLM", "AliceAIForCausalLM", "ApertusForCausalLM", "AXK1ForCausalLM", "BailingMoeForCausalLM",
    "BailingMoeV2ForCausalLM", "BailingMoeV2_5ForCausalLM", "BailingMoeV3ForCausalLM", "BeamForCausalLM",
    "BloomForCausalLM", "ChatGLMModel", "ChatGLMForConditionalGeneration", "CohereForCausalLM",
    "Cohere2ForCausalLM", "Cohere2MoeForCausalLM", "DbrxForCausalLM", "DeciLMForCausalLM", "DeepseekForCausalLM",
    "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM", "DeepseekV4ForCausalLM",
    "DomynEdgeForCausalLM", "DoryForCausalLM", "Ernie4_5ForCausalLM", "Ernie4_5_MoeForCausalLM",
    "ExaoneForCausalLM", "Exaone4ForCausalLM", "ExaoneMoeForCausalLM", "ExaoneMoEForCausalLM",
    "FalconForCausalLM", "FalconMambaForCausalLM", "FalconH1ForCausalLM", "FlintForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Rnj1ForCausalLM", "Gemma3nForCausalLM", "Gemma4ForCausalLM",
    "Qwen3NextForCausalLM", "Qwen4ExpForCausalLM", "Glm4ForCausalLM", "Glm4MoeForCausalLM",
    "Glm4MoeLiteForCausalLM", "GlmMoeDsaForCausalLM", "Glm5NextForCausalLM", "GptOssForCausalLM",
    "GPT2LMHeadModel", "GPTJForCausalLM", "GraniteForCausalLM", "GraniteMoeForCausalLM",
    "GraniteMoeHybridForCausalLM", "GraniteMoeSharedForCausalLM", "GraniteMoeSWAForCausalLM",
    "GraniteSWAForCausalLM", "HrmTextForCausalLM", "HYV3ForCausalLM", "HYV4ForCausalLM",
    "HCXVisionV2ForCausalLM", "HyperCLOVAXForCausalLM", "InternLM2ForCausalLM", "InternLM3ForCausalLM",
    "IQuestCoderForCausalLM", "IQuestLoopCoderForCausalLM", "JambaForCausalLM", "K2HorizonForCausalLM",
    "KimiLinearForCausalLM", "Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "LagunaForCausalLM", "LlamaForCausalLM",
    "Llama4ForCausalLM", "LLaMAForCausalLM", "LongcatFlashForCausalLM", "LongcatFlashNgramForCausalLM",
    "MambaForCausalLM", "Mamba2ForCausalLM", "MiniCPMForCausalLM", "MiniCPM3ForCausalLM", "MiniMaxM2ForCausalLM",
    "MiniMaxM3SparseForCausalLM", "InklingForCausalLM", "InklingForConditionalGeneration",
    "Ministral3ForCausalLM", "MistralForCausalLM", "MistralLarge3ForCausalLM", "MixtralForCausalLM",
    "MiMoForCausalLM", "MiMoV2FlashForCausalLM", "MiMoV2ForCausalLM", "NemotronForCausalLM",
    "NemotronHForCausalLM", "NemotronHPuzzleForCausalLM", "MuseGlimmerForCausalLM", "OlmoHybridForCausalLM",
    "OlmoeForCausalLM", "OPTForCausalLM", "OrionForCausalLM", "PanguEmbeddedForCausalLM",
    "PanguProMoEV2ForCausalLM", "PanguUltraMoEForCausalLM", "Param2MoEForCausalLM", "Phi3ForCausalLM",
    "PhiMoEForCausalLM", "Plamo3ForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM", "Qwen3_5ForCausalLM", "Qwen3_5MoeForCausalLM", "SarvamMoEForCausalLM",
    "SarvamMLAForCausalLM", "Step1ForCausalLM", "Step3TextForCausalLM", "Step3p5ForCausalLM", "Step5ForCausalLM",
    "StableLmForCausalLM", "SolarForCausalLM", "TeleChat2ForCausalLM", "TeleChat3ForCausalLM",
    "TeleFLMForCausalLM", "Zamba2ForCausalLM",
)


def raise_for_unsupported(architectures: list[str]) -> None:
    """registry.py:1249-1252."""
    all_supported_archs = dict.fromkeys(TEXT_GENERATION_ARCHS).keys()
    raise ValueError(
        f"Model architectures {architectures} are not supported for now. "
        f"Supported architectures: {all_supported_archs}"
    )
