import pytest
import torch

from slimdiff.testing import tiny_clip_tokenizer


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny SDXL-shaped pipeline directory (diffusers' test configs: a text_time U-Net reading two
    concatenated 32-wide CLIP text encoders, the second with a 32-dim projection), seeded."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    d = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 x 8 time ids + 32 pooled text
        cross_attention_dim=64,  # 32 + 32: the two text encoders concatenated
    )
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, sample_size=32)
    text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                          num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
                          hidden_act="gelu", projection_dim=32)
    tokenizer = tiny_clip_tokenizer(d / "tok")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
    )
    pipe.save_pretrained(d / "pipe")
    return d / "pipe"


@pytest.fixture
def clip_tokenizer(tmp_path):
    """A fast byte-level CLIP tokenizer (its unknown and end-of-text tokens share one id, as CLIP's)."""
    from transformers import CLIPTokenizerFast

    slow = tiny_clip_tokenizer(tmp_path / "clip-tok")
    return CLIPTokenizerFast(str(tmp_path / "clip-tok" / "vocab.json"), str(tmp_path / "clip-tok" / "merges.txt"),
                             model_max_length=slow.model_max_length)
