"""The full-scale AD-Copilot model: Qwen2.5-VL with the Comparison Encoder (Jiang et al., 2026).

Built on transformers' Qwen2.5-VL classes (subclassed, not copied): the vision tower gains a
``compare_visual_encoder`` (:class:`adcopilot.model.compare.ComparisonEncoder`, the very class the
nano model uses, in the released parameter layout), the model adds each image's comparison tokens
right after its base tokens, and ``get_rope_index`` gives them M-RoPE positions.

    pixel_values of n images (sum_i N_i patches, 3*2*14*14)
      -> ViT blocks -> pre-merge features, per image        (N_i, 1280)     N_i = h_i * w_i patches
           -> merger -> base tokens                          (N_i / 4, 3584)
           -> ComparisonEncoder(cur = image i, prev = P_i)   (L, 3584)       P_0 = I_0, P_i = I_{i-1}
      -> image i's embeddings = [base tokens; comparison tokens] (comparison tokens only for the
         images the sequence has placeholders for: every image, or only the query)
      -> scattered into the <|image_pad|> positions of the LLM sequence -> Qwen2.5 LLM -> logits

``config.compare_attention_layout`` picks the encoder's computation: ``release`` (the public
port's interleaving head merge, on window-ordered features of all images padded to the longest,
paired by a roll over the batch) or ``standard``; ``config.compare_position`` the comparison
tokens' M-RoPE positions (``docs/scale.md`` weighs the evidence for each).

Which images carry comparison tokens is read from the sequence itself: an image whose run of
``<|image_pad|>`` tokens is L longer than its base-token count has them (the processor decides,
following ``config.compare_placement``). So the model, ``get_rope_index`` and generation with the
KV cache all agree with whatever the processor produced.

Usage::

    model = ADCopilotForConditionalGeneration(ADCopilotConfig(...))      # random weights
    model = load_full_model("path/to/checkpoint")                        # see loading.py
    out = model(**processor(images=[ref, query], text=[prompt], return_tensors="pt"))
    ids = model.generate(**inputs, max_new_tokens=64, do_sample=False)
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLTextModel,
)
from transformers.vision_utils import get_vision_window_index

from adcopilot.full.configuration_adcopilot import ADCopilotConfig, comparison_config_from_vision
from adcopilot.model.compare import ComparisonEncoder

log = logging.getLogger(__name__)

#: Prefix of the Comparison Encoder's parameters inside the model (the released name, new layout).
COMPARE_PREFIX = "model.visual.compare_visual_encoder."


def _init_comparison(module: nn.Module) -> None:
    """Initialise the raw parameter transformers' generic init does not know (the queries)."""
    if isinstance(module, ComparisonEncoder):
        init.normal_(module.query_embeddings, mean=0.0, std=0.02)


class ADCopilotPreTrainedModel(Qwen2_5_VLPreTrainedModel):
    config: ADCopilotConfig
    config_class = ADCopilotConfig
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "ComparisonEncoder"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_comparison(module)


class ADCopilotVisionModel(Qwen2_5_VisionTransformerPretrainedModel):
    """Qwen2.5-VL's ViT plus the Comparison Encoder on its pre-merge features."""

    _no_split_modules = ["Qwen2_5_VLVisionBlock", "ComparisonEncoder"]

    def __init__(self, config, *inputs, **kwargs) -> None:
        super().__init__(config, *inputs, **kwargs)
        # Built after the ViT's post_init, so initialise it here as the model-level init would.
        self.compare_visual_encoder = ComparisonEncoder(comparison_config_from_vision(config))
        self.compare_visual_encoder.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_comparison(module)

    def pre_merge_features(
        self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, window_order: bool = False
    ) -> list[torch.Tensor]:
        """The ViT's last hidden states (window order, (sum N_i, C)) -> per image (N_i, C).

        In patch order (the processor's: merge blocks row-major, the 2x2 patches of a block
        together), or left in the tower's window order with ``window_order`` (each image's rows
        stay contiguous either way), as the released model reads them."""
        sizes = grid_thw.prod(-1).tolist()
        if window_order:
            return list(torch.split(hidden_states, sizes))
        unit = self.spatial_merge_unit
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=self.spatial_merge_size, window_size=self.window_size,
            patch_size=self.patch_size,
        )
        reverse = torch.argsort(window_index.to(hidden_states.device))
        n, c = hidden_states.shape
        states = hidden_states.reshape(n // unit, unit, c)[reverse].reshape(n, c)  # undo the window permutation
        return list(torch.split(states, sizes))

    def comparison_tokens(
        self, feats: list[torch.Tensor], prev_index: list[int], wanted: list[int], layout: str = "standard"
    ) -> dict[int, torch.Tensor]:
        """Comparison tokens (L, D) of each image in ``wanted``, image i compared with ``prev_index[i]``.

        ``standard``: pairs of equal patch counts run as one batch through the encoder. ``release``:
        every image at once, padded to the longest (the released model's batching), as the
        interleaving head merge makes each token depend on the padded length."""
        enc = self.compare_visual_encoder
        if layout == "release":
            tokens = enc.forward_padded(feats, prev_index, layout=layout)  # (n, L, D)
            return {i: tokens[i] for i in wanted}
        groups: dict[tuple[int, int], list[int]] = {}
        for i in wanted:
            groups.setdefault((feats[i].shape[0], feats[prev_index[i]].shape[0]), []).append(i)
        out: dict[int, torch.Tensor] = {}
        for idxs in groups.values():
            cur = torch.stack([feats[i] for i in idxs])  # (g, N, C)
            prev = torch.stack([feats[prev_index[i]] for i in idxs])  # (g, M, C)
            group_tokens, _ = enc(cur, prev, layout=layout)  # (g, L, D)
            out.update(zip(idxs, group_tokens.unbind(0), strict=True))
        return out


def comparison_positions(
    start: int, extent: int, num: int, mode: str, grid: tuple[int, int] | None = None
) -> tuple[torch.Tensor, int]:
    """M-RoPE positions (3, num) of an image's comparison tokens and the next free position.

    ``start``: the image's first position; ``extent``: max(grid h, grid w) of its base tokens;
    ``grid``: (h, w) of its base tokens (needed by ``last``).
    diagonal: token k at (start, start + k, start + k), the paper's (i, 0, 0) .. (i, L, L);
    start: all at (start, start, start) and the next free position start + 1 (the public port's:
    the text after them overlaps the image's grid); shared: all at (p, p, p), p = the position
    right after the image; last: all at the image's last base token, (start, start + h - 1,
    start + w - 1) (what the port's comment says its code does); sequential: like text."""
    k = torch.arange(num)
    if mode == "last":
        if grid is None:
            raise ValueError("compare_position 'last' needs the image's grid")
        gh, gw = grid
        return torch.tensor([start, start + gh - 1, start + gw - 1]).view(3, 1).expand(3, num).clone(), start + extent
    if mode == "start":
        return torch.full((3, num), start, dtype=torch.long), start + 1
    if mode == "diagonal":
        pos = torch.stack([torch.full_like(k, start), start + k, start + k])
        return pos, start + max(extent, num)
    if mode == "shared":
        p = start + extent
        return torch.full((3, num), p, dtype=torch.long), p + 1
    if mode == "sequential":
        return (start + extent + k).view(1, -1).expand(3, -1).clone(), start + extent + num
    raise ValueError(f"unknown compare_position {mode!r}")


def image_runs(input_ids: torch.Tensor, image_token_id: int) -> list[list[int]]:
    """Per row of ``input_ids`` (B, S): lengths of its runs of image tokens, one run per image."""
    runs: list[list[int]] = []
    for row in input_ids.tolist():
        runs.append([len(list(g)) for is_img, g in itertools.groupby(row, lambda t: t == image_token_id) if is_img])
    return runs


class ADCopilotModel(ADCopilotPreTrainedModel, Qwen2_5_VLModel):
    """Qwen2.5-VL's base model with comparison tokens after each image's base tokens."""

    def __init__(self, config: ADCopilotConfig) -> None:
        PreTrainedModel.__init__(self, config)
        # As Qwen2_5_VLModel.__init__, with the vision tower that carries the Comparison Encoder.
        self.visual = ADCopilotVisionModel._from_config(config.vision_config)
        self.language_model = Qwen2_5_VLTextModel._from_config(config.text_config)
        self.rope_deltas = None
        self.post_init()

    # ------------------------------------------------------------------ layout of images in the sequence
    def comparison_layout(
        self, input_ids: torch.Tensor | None, image_grid_thw: torch.Tensor
    ) -> tuple[list[bool], list[int]]:
        """(has comparison tokens, index of its previous image) for each image of the flattened batch."""
        merge = self.config.vision_config.spatial_merge_size**2
        base = (image_grid_thw.prod(-1) // merge).tolist()
        n = len(base)
        num = self.config.compare_token_size
        if input_ids is None:  # embeddings given: one sample, placement from the config
            has = [True] * n if self.config.compare_placement == "all" else [i == n - 1 for i in range(n)]
            first = [0]
        else:
            runs = image_runs(input_ids, self.config.image_token_id)
            flat = [r for row in runs for r in row]
            if len(flat) != n:
                raise ValueError(
                    f"the sequence has {len(flat)} runs of image tokens but {n} images were given "
                    "(each image must sit between <|vision_start|> and <|vision_end|>)"
                )
            has = []
            for i, (r, b) in enumerate(zip(flat, base, strict=True)):
                if r not in (b, b + num):
                    raise ValueError(
                        f"image {i} has {r} placeholder tokens; expected {b} (base) or {b + num} (base + comparison)"
                    )
                has.append(r == b + num)
            first = list(itertools.accumulate([0] + [len(row) for row in runs[:-1]]))
        # The release layout pairs over the whole batch (a roll over the flattened images).
        by_sample = self.config.compare_pairing == "sample" and self.config.compare_attention_layout != "release"
        starts = set(first) if by_sample else {0}
        prev = [i if i in starts else i - 1 for i in range(n)]  # P_0 = I_0, P_i = I_{i-1}
        return has, prev

    def add_comparison_tokens(
        self, image_outputs, image_grid_thw: torch.Tensor, input_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """Per image: its base tokens (N_i/4, D), followed by its comparison tokens (L, D) where wanted.

        ``image_outputs`` is what ``get_image_features`` returns (base tokens per image in
        ``pooler_output``, the ViT's pre-merge states in ``last_hidden_state``); images whose
        entries already hold their comparison tokens are left as they are."""
        has, prev = self.comparison_layout(input_ids, image_grid_thw)
        base = list(image_outputs.pooler_output)
        merge = self.config.vision_config.spatial_merge_size**2
        n_base = (image_grid_thw.prod(-1) // merge).tolist()
        wanted = [i for i, h in enumerate(has) if h and base[i].shape[0] == n_base[i]]
        if not wanted:
            return tuple(base)
        layout = self.config.compare_attention_layout
        feats = self.visual.pre_merge_features(
            image_outputs.last_hidden_state, image_grid_thw, window_order=layout == "release"
        )
        tokens = self.visual.comparison_tokens(feats, prev, wanted, layout)
        for i in wanted:
            base[i] = torch.cat([base[i], tokens[i].to(base[i].dtype)], dim=0)  # (N_i/4 + L, D)
        return tuple(base)

    # ------------------------------------------------------------------ M-RoPE
    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.IntTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen2.5-VL's 3-D positions, with an image's comparison tokens placed per ``compare_position``.

        Returns position_ids (3, B, S) and the per-row deltas (B, 1) used while generating."""
        if mm_token_type_ids is None:
            mm_token_type_ids = self.token_types(input_ids)
        merge = self.config.vision_config.spatial_merge_size
        tokens_per_second = self.config.vision_config.tokens_per_second
        num = self.config.compare_token_size
        mode = self.config.compare_position
        device = input_ids.device
        position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=device)
        images = iter(image_grid_thw) if image_grid_thw is not None else iter(())
        videos = iter(video_grid_thw) if video_grid_thw is not None else iter(())
        seconds = iter(second_per_grid_ts) if second_per_grid_ts is not None else itertools.repeat(1)
        deltas = []
        for b in range(input_ids.shape[0]):
            types = mm_token_type_ids[b]
            keep = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(types, dtype=torch.bool)
            types = types[keep]
            pos = 0
            parts: list[torch.Tensor] = []
            for kind, group in itertools.groupby(enumerate(types.tolist()), lambda x: x[1]):
                group = list(group)
                length = group[-1][0] + 1 - group[0][0]
                if kind == 0:  # text
                    parts.append(torch.arange(length, device=device).view(1, -1).expand(3, -1) + pos)
                    pos += length
                    continue
                thw = next(images) if kind == 1 else next(videos)
                interval = tokens_per_second * next(seconds) if kind == 2 else 1
                parts.append(self.get_vision_position_ids(pos, thw, 1, merge, interval, device=device))
                extent = int(max(thw[1], thw[2])) // merge
                n_base = int(thw.prod()) // merge**2
                if kind == 1 and length == n_base + num:
                    grid = (int(thw[1]) // merge, int(thw[2]) // merge)
                    comp, pos = comparison_positions(pos, extent, num, mode, grid)
                    parts.append(comp.to(device))
                elif length == n_base:
                    pos += extent
                else:
                    raise ValueError(f"an image or video has {length} placeholder tokens; expected {n_base}"
                                     f" or {n_base + num}")
            llm_positions = torch.cat(parts, dim=1)
            position_ids[:, b, keep] = llm_positions.to(position_ids.dtype)
            deltas.append(int(llm_positions.max()) + 1 - int(keep.sum()))
        return position_ids, torch.tensor(deltas, device=device).unsqueeze(1)

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """mm_token_type_ids from input_ids: 0 text, 1 image, 2 video."""
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == self.config.image_token_id] = 1
        types[input_ids == self.config.video_token_id] = 2
        return types

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ):
        if input_ids is not None and mm_token_type_ids is None and (
            image_grid_thw is not None or video_grid_thw is not None
        ):
            mm_token_type_ids = self.token_types(input_ids)
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if pixel_values is not None and mm_encoder_outputs.get("image") is None:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values, image_grid_thw, return_dict=True)
            pixel_values = None
        image_outputs = mm_encoder_outputs.get("image")
        if self.config.sequence_compare and image_outputs is not None and image_grid_thw is not None:
            # generate() encodes the images before the first forward, without the sequence, so the
            # comparison tokens are added here, where the placeholders are known.
            image_outputs.pooler_output = self.add_comparison_tokens(image_outputs, image_grid_thw, input_ids)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            second_per_grid_ts=second_per_grid_ts,
            mm_encoder_outputs=mm_encoder_outputs or None,
            **kwargs,
        )


class ADCopilotVLForConditionalGeneration(ADCopilotPreTrainedModel, Qwen2_5_VLForConditionalGeneration):
    """AD-Copilot with the language-model head (the released class name); ``generate`` uses the KV cache."""

    def __init__(self, config: ADCopilotConfig) -> None:
        PreTrainedModel.__init__(self, config)
        self.model = ADCopilotModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def _maybe_prepare_encoder_kwargs_for_generation(
        self, inputs_tensor: torch.Tensor, model_kwargs: dict, model_input_name: str | None, generation_config
    ) -> dict:
        # generate() encodes the images before prefill and drops image_grid_thw: add the comparison
        # tokens now, while the grid and the placeholders are at hand.
        grid = model_kwargs.get("image_grid_thw")
        model_kwargs = super()._maybe_prepare_encoder_kwargs_for_generation(
            inputs_tensor, model_kwargs, model_input_name, generation_config
        )
        image_outputs = (model_kwargs.get("mm_encoder_outputs") or {}).get("image")
        is_ids = inputs_tensor is not None and inputs_tensor.ndim == 2 and not inputs_tensor.is_floating_point()
        if self.config.sequence_compare and image_outputs is not None and grid is not None:
            image_outputs.pooler_output = self.model.add_comparison_tokens(
                image_outputs, grid, inputs_tensor if is_ids else None
            )
        return model_kwargs

    @property
    def comparison_encoder(self) -> ComparisonEncoder:
        return self.model.visual.compare_visual_encoder


#: A shorter name for the same class.
ADCopilotForConditionalGeneration = ADCopilotVLForConditionalGeneration
