"""Tiny random language model, tokenizer and nano detector for fast language tests."""

from __future__ import annotations

import torch

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Is there any defect in the object? A. Yes. B. No. Answer with the option's letter from the given choices directly.",
    "The first image is a normal sample. The second image is the query sample. Comparison of the query.",
    "What type of defect is at the top left of the image? crack. scratch. stain. hole.",
    "You are an industrial inspection assistant. You compare a query image with normal samples and answer briefly.",
    'Output the bounding boxes of all defects in the query image as JSON. [{"bbox_2d": [10, 20, 30, 40], "label": "crack"}]',
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", additional_special_tokens=specials[1:])
    fast.chat_template = CHATML
    return fast


def tiny_llm(vocab: int, hidden: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_detector(image_size: int = 64, seed: int = 0):
    from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
    from adcopilot.model.vision import load_vision_tower

    torch.manual_seed(seed)
    cfg = NanoConfig(image_size=image_size, width=16, num_heads=2, mlp_hidden=32, num_queries=4, out_width=24,
                     head_hidden=8, smooth_sigma=0.0)
    return NanoDetector(NanoComparisonModel(cfg).eval(), tower=load_vision_tower(pretrained=False))
